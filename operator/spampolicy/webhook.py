"""Admission: the same checks the operator runs, so `kubectl apply` of a bad SpamPolicy is
refused with the validator's messages instead of being accepted and left unserved; and the
golden corpus (`spec.goldenCorpus`), so a change that would misclassify a golden message
is refused with the messages and rules responsible."""

from __future__ import annotations

import functools
import json
from typing import Any

from filter_server.policy.validate import validate_policy
from mailwarden_operator.common.kube import KubeError
from mailwarden_operator.spampolicy.golden import CorpusVolume, check_golden
from mailwarden_operator.spampolicy.policy import (
    ConfigMapReader,
    PolicyBundle,
    PolicyRejected,
    build_bundle,
)
from mailwarden_operator.spampolicy.spec import serving_errors, with_defaults

MAX_ERRORS = 20
# Verdicts remembered by content: kopf's bookkeeping patches, retries and re-applies of an
# unchanged spec are answered without compiling the policy again.
VERDICT_CACHE_SIZE = 256


def admission_errors(spec: dict[str, Any] | None, name: str) -> list[str]:
    """Every reason to refuse this SpamPolicy spec (empty: admit it), remembered by content."""
    try:
        key = json.dumps([spec, name], sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return _admission_errors(spec, name)
    return list(_cached_errors(key))


@functools.lru_cache(maxsize=VERDICT_CACHE_SIZE)
def _cached_errors(key: str) -> tuple[str, ...]:
    spec, name = json.loads(key)
    return tuple(_admission_errors(spec, name))


def needs_review(operation: str | None, old: dict[str, Any] | None,
                 new: dict[str, Any] | None) -> bool:
    """Whether an admission request must be judged: not an UPDATE that leaves the spec as it
    was (labels, annotations, kopf's bookkeeping, finalizers), nor a write to an object that
    is being deleted (the garbage collector removing its finalizer). The chart's
    matchConditions keep the API server from even calling for those; this repeats them."""
    if new is not None and (new.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if operation == "UPDATE" and old is not None and new is not None:
        return old.get("spec") != new.get("spec")
    return True


def _admission_errors(spec: dict[str, Any] | None, name: str) -> list[str]:
    defaulted = with_defaults(spec)
    errors = [f"spec.policy.{e}" if e.path else f"spec.policy: {e.reason}"
              for e in validate_policy(defaulted.get("policy"))]
    model = (defaulted.get("policy") or {}).get("model") or {}
    if "file" in model:
        errors.append("spec.policy.model.file: on a cluster the model comes from "
                      "model.configMapRef (model.file is for local policy directories)")
    errors += [f"spec.{e}" if not e.startswith("metadata") else e
               for e in serving_errors(defaulted, name or "")]
    return errors


def admission_message(errors: list[str]) -> str:
    shown = errors[:MAX_ERRORS]
    more = len(errors) - len(shown)
    return "invalid SpamPolicy: " + "; ".join(shown) + (f"; and {more} more" if more else "")


def golden_errors(spec: dict[str, Any] | None, old_spec: dict[str, Any] | None,
                  read_configmap: ConfigMapReader,
                  volume: CorpusVolume | None = None) -> list[str]:
    """Why the golden corpus refuses this (valid) spec: one line per misclassified golden
    message, naming the rules responsible; empty when it has no golden corpus or passes.
    `old_spec` (an UPDATE's current spec) is the baseline a spam message is compared with,
    to name the rules the change stopped firing."""
    defaulted = with_defaults(spec)
    if not defaulted.get("goldenCorpus"):
        return []
    try:
        candidate = build_bundle(defaulted.get("policy"), read_configmap)
        try:
            check_golden(defaulted, candidate, read_configmap, volume=volume)
        except PolicyRejected as exc:
            # Only then is the baseline worth validating and compiling: to name the rules
            # golden spam lost.
            lost_spam = any(e.startswith("golden spam") for e in exc.errors)
            baseline = _baseline(old_spec, read_configmap) if lost_spam else None
            if baseline is None:
                raise
            check_golden(defaulted, candidate, read_configmap, baseline, volume)
    except PolicyRejected as exc:
        return [_located(error) for error in exc.errors]
    except KubeError as exc:
        # Unverifiable is refused, as an unreachable webhook (failurePolicy Fail) would be.
        return [f"spec.goldenCorpus: cannot read the golden corpus to check it: {exc}"]
    return []


def _baseline(old_spec: dict[str, Any] | None, read_configmap: ConfigMapReader
              ) -> PolicyBundle | None:
    """The bundle of the spec being replaced, None when there is none or it never was
    servable (nothing to compare with)."""
    if not old_spec:
        return None
    try:
        return build_bundle(with_defaults(old_spec).get("policy"), read_configmap)
    except PolicyRejected:
        return None


def _located(error: str) -> str:
    if error.startswith("golden "):         # a misclassified message: names its source
        return error
    if error.startswith("goldenCorpus"):
        return f"spec.{error}"
    if error.startswith("model"):
        return f"spec.policy.{error}"
    return f"spec.goldenCorpus: {error}"


def golden_message(errors: list[str]) -> str:
    shown = errors[:MAX_ERRORS]
    more = len(errors) - len(shown)
    return ("SpamPolicy change refused by its golden corpus: " + "; ".join(shown)
            + (f"; and {more} more" if more else ""))
