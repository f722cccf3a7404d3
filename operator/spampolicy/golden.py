"""`spec.goldenCorpus` on a cluster: golden sets read from ConfigMaps and from directories
of the golden-corpus volume (mounted in the operator pods; `<volume>/<namespace>/<path>`),
checked against the candidate policy bundle by the admission webhook and by the operator
(the same verdict when the webhook is not installed). The check itself is
`filter_server.engine.golden`.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filter_server.engine.compiled import CompiledPolicy
from filter_server.engine.golden import (
    GoldenCorpusInvalid,
    GoldenSet,
    check_corpus,
    corpus_digest,
    messages_in,
)
from filter_server.policy.loader import LoadedPolicy
from mailwarden_operator.spampolicy.policy import ConfigMapReader, PolicyBundle, PolicyRejected

# Compiled policies by content hash: the webhook judges the same candidate several times
# (dry runs, retries, re-applies) and the operator re-checks it on every resync.
COMPILED_CACHE_SIZE = 4
VERDICT_CACHE_SIZE = 64


@dataclass(frozen=True)
class CorpusVolume:
    """The golden-corpus volume as the operator mounted it (`--golden-corpus-dir`; None:
    not mounted), seen from one namespace: its folder is `<root>/<namespace>`."""
    root: Path | None
    namespace: str

    def read(self, index: int, path: str) -> tuple[tuple[str, bytes], ...]:
        where = f"goldenCorpus.directories[{index}]"
        if self.root is None:
            raise PolicyRejected("GoldenCorpusNotFound", [
                f"{where}: the operator has no golden-corpus volume (chart value "
                "operator.goldenCorpusVolume, flag --golden-corpus-dir)"])
        base = (self.root / self.namespace).resolve()
        directory = (base / path).resolve()
        # The CRD refuses `..` and absolute paths; a symlink could still point away.
        if not directory.is_relative_to(base):
            raise PolicyRejected("GoldenCorpusInvalid", [
                f"{where}: {path!r} leads outside the namespace's folder"])
        if not directory.is_dir():
            raise PolicyRejected("GoldenCorpusNotFound", [
                f"{where}: no directory {path!r} in the golden-corpus volume's folder "
                f"{self.namespace}/"])
        try:
            return messages_in(directory)
        except OSError as exc:
            raise PolicyRejected("GoldenCorpusNotFound", [
                f"{where}: cannot read {path!r}: {exc.strerror or exc}"]) from None


def golden_sets(corpus: dict[str, Any] | None, read_configmap: ConfigMapReader,
                volume: CorpusVolume | None = None) -> list[GoldenSet]:
    """The sets `spec.goldenCorpus` names, read through `read_configmap` and from `volume`;
    raises PolicyRejected (GoldenCorpusNotFound, GoldenCorpusInvalid) when one cannot be
    used."""
    sets = []
    for index, ref in enumerate((corpus or {}).get("configMaps") or []):
        name = ref["name"]
        configmap = read_configmap(name)
        if configmap is None:
            raise PolicyRejected("GoldenCorpusNotFound", [
                f"goldenCorpus.configMaps[{index}]: ConfigMap {name!r} not found"])
        messages: list[tuple[str, bytes]] = []
        for key, text in sorted((configmap.get("data") or {}).items()):
            messages.append((key, text.encode("utf-8")))
        for key, encoded in sorted((configmap.get("binaryData") or {}).items()):
            try:
                messages.append((key, base64.b64decode(encoded, validate=True)))
            except ValueError:
                raise PolicyRejected("GoldenCorpusInvalid", [
                    f"goldenCorpus.configMaps[{index}]: binaryData[{key!r}] of ConfigMap "
                    f"{name!r} is not base64"]) from None
        label = ref["label"]
        bound = ref.get("atMost" if label == "ham" else "atLeast") or "TAG"
        try:
            sets.append(GoldenSet(f"ConfigMap {name}", label, bound, tuple(messages)))
        except GoldenCorpusInvalid as exc:
            raise PolicyRejected("GoldenCorpusInvalid", [
                f"goldenCorpus.configMaps[{index}]: {exc}"]) from None
    for index, ref in enumerate((corpus or {}).get("directories") or []):
        volume = volume or CorpusVolume(None, "")
        label = ref["label"]
        bound = ref.get("atMost" if label == "ham" else "atLeast") or "TAG"
        try:
            sets.append(GoldenSet(f"directory {ref['path']}", label, bound,
                                  volume.read(index, ref["path"])))
        except GoldenCorpusInvalid as exc:
            raise PolicyRejected("GoldenCorpusInvalid", [
                f"goldenCorpus.directories[{index}]: {exc}"]) from None
    return sets


_compiled_policies: dict[str, CompiledPolicy] = {}
_compile_lock = threading.Lock()


def _compiled(bundle: PolicyBundle) -> CompiledPolicy:
    with _compile_lock:
        compiled = _compiled_policies.get(bundle.hash)
        if compiled is None:
            try:
                compiled = CompiledPolicy(LoadedPolicy(bundle.policy, bundle.model_bytes,
                                                       bundle.hash, generation=bundle.hash))
            except Exception as exc:  # a model read from a ConfigMap: any garbage
                # The filter pods would refuse this bundle too; the corpus cannot vouch.
                raise PolicyRejected("GoldenCorpusUnverifiable", [
                    f"the policy cannot be loaded to classify the golden corpus: "
                    f"{type(exc).__name__}: {exc}"]) from None
            if len(_compiled_policies) >= COMPILED_CACHE_SIZE:
                _compiled_policies.pop(next(iter(_compiled_policies)))
            _compiled_policies[bundle.hash] = compiled
        return compiled


_verdicts: dict[tuple[str, str | None, str], tuple[str, ...]] = {}


def golden_violations(bundle: PolicyBundle, sets: list[GoldenSet],
                      baseline: PolicyBundle | None = None) -> list[str]:
    """One message per golden message the candidate `bundle` classifies outside its bound
    (empty: the change is safe for the corpus); remembered by policy and corpus content."""
    key = (bundle.hash, baseline.hash if baseline else None, corpus_digest(sets))
    with _compile_lock:
        known = _verdicts.get(key)
    if known is not None:
        return list(known)
    try:
        report = check_corpus(_compiled(bundle), sets,
                              _compiled(baseline) if baseline else None)
    except GoldenCorpusInvalid as exc:
        raise PolicyRejected("GoldenCorpusInvalid", [f"goldenCorpus: {exc}"]) from None
    verdict = tuple(str(v) for v in report.violations)
    with _compile_lock:
        if len(_verdicts) >= VERDICT_CACHE_SIZE:
            _verdicts.pop(next(iter(_verdicts)))
        _verdicts[key] = verdict
    return list(verdict)


def check_golden(spec: dict[str, Any], bundle: PolicyBundle, read_configmap: ConfigMapReader,
                 baseline: PolicyBundle | None = None,
                 volume: CorpusVolume | None = None) -> None:
    """Raise PolicyRejected(GoldenCorpusViolation) when the candidate misclassifies any
    golden message; nothing when the spec has no golden corpus."""
    corpus = spec.get("goldenCorpus")
    if not corpus:
        return
    violations = golden_violations(bundle, golden_sets(corpus, read_configmap, volume),
                                   baseline)
    if violations:
        raise PolicyRejected("GoldenCorpusViolation", violations)
