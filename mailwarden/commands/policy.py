"""`mailwarden policy validate FILE...`, `mailwarden policy test POLICY --corpus DIR` and
`mailwarden policy digest MESSAGE...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXTRA = "server"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("policy", help="validate policies, compute signatures")
    psub = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    validate = psub.add_parser(
        "validate", help="check policy files (bare policies or SpamPolicy resources)",
        description="Print every error with its path and reason; exit 1 if any file is "
        "invalid.")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.add_argument("--quiet", "-q", action="store_true",
                          help="print nothing for valid files")
    validate.set_defaults(func=run_validate)
    test = psub.add_parser(
        "test", help="check a policy against a golden corpus of labelled messages",
        description="Classify every golden message with POLICY and report each one outside "
        "its bound (golden ham QUARANTINE or REJECT, golden spam below TAG, or the bounds "
        "spec.goldenCorpus sets) with the rules responsible — the check the admission "
        "webhook runs on a cluster. DIR holds ham/ and spam/ (one raw message per file); "
        "for a SpamPolicy with spec.goldenCorpus, DIR holds one directory per ConfigMap it "
        "names (what `kubectl create configmap NAME --from-file=DIR/NAME` reads). Exit "
        "status: 0 all acceptable, 1 a golden message misclassified, 2 unusable input.")
    test.add_argument("policy", type=Path, metavar="POLICY",
                      help="policy file (a bare policy or a SpamPolicy resource)")
    test.add_argument("--corpus", type=Path, required=True, metavar="DIR",
                      help="the golden corpus directory")
    test.add_argument("--model", type=Path, metavar="FILE",
                      help="the model, for a policy whose model is a configMapRef")
    test.add_argument("--baseline", type=Path, metavar="POLICY",
                      help="the policy serving now: a failing spam message also names "
                      "the rules that fired there and no longer do")
    test.set_defaults(func=run_test)
    digest = psub.add_parser(
        "digest", help="print the signature digest of raw messages (for signatures.digests)")
    digest.add_argument("files", nargs="+", type=Path, metavar="MESSAGE")
    digest.set_defaults(func=run_digest)


def run_validate(args: argparse.Namespace) -> int:
    from filter_server.policy.validate import PolicyInvalid, load_policy_file

    failed = 0
    for path in args.files:
        base_dir = path.parent if path.is_file() else None
        try:
            policy = load_policy_file(path, base_dir=base_dir)
        except PolicyInvalid as exc:
            failed += 1
            for error in exc.errors:
                print(f"{path}: {error}", file=sys.stderr)
            continue
        if not args.quiet:
            print(f"{path}: valid ({len(policy['rules'])} rules, "
                  f"{len(policy['metaRules'])} meta rules)")
    return 1 if failed else 0


def run_digest(args: argparse.Namespace) -> int:
    from filter_server.engine.compiled import message_digest

    status = 0
    for path in args.files:
        try:
            print(f"{message_digest(path.read_bytes())}  {path}")
        except OSError as exc:
            print(f"{path}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
    return status


class _Unusable(Exception):
    pass


def _load_for_test(path: Path, model: Path | None) -> Any:
    """A compiled policy from a file, its model from `model.file` or `model`."""
    from filter_server.engine.compiled import CompiledPolicy
    from filter_server.policy.loader import LoadedPolicy, policy_hash
    from filter_server.policy.validate import (
        PolicyInvalid,
        apply_defaults,
        parse_policy_text,
        validate_policy,
    )

    try:
        text = path.read_text(encoding="utf-8")
        policy = parse_policy_text(text, str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unusable(f"{path}: cannot read: {exc}") from None
    except PolicyInvalid as exc:
        raise _Unusable("\n".join(f"{path}: {e}" for e in exc.errors)) from None
    model_bytes = None
    if isinstance(policy, dict) and "configMapRef" in (policy.get("model") or {}):
        if model is None:
            raise _Unusable(f"{path}: model.configMapRef names a ConfigMap; pass the model "
                            "itself with --model FILE")
        policy = {**policy, "model": {k: v for k, v in policy["model"].items()
                                      if k != "configMapRef"} | {"file": model.name}}
    errors = validate_policy(policy, base_dir=model.parent if model else path.parent)
    if errors:
        raise _Unusable("\n".join(f"{path}: {e}" for e in errors))
    policy = apply_defaults(policy)
    if "model" in policy:
        model_path = model or path.parent / policy["model"]["file"]
        model_bytes = model_path.read_bytes()
    return CompiledPolicy(LoadedPolicy(policy, model_bytes, policy_hash(policy, model_bytes),
                                       str(path)))


def _golden_sets(policy_path: Path, corpus: Path) -> list[Any]:
    import yaml

    from filter_server.engine.golden import GoldenCorpusInvalid, GoldenSet, messages_in

    if not corpus.is_dir():
        raise _Unusable(f"{corpus}: not a directory")
    try:
        document = yaml.safe_load(policy_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        document = None   # _load_for_test reported it already
    golden = ((document.get("spec") or {}).get("goldenCorpus")
              if isinstance(document, dict) and document.get("kind") == "SpamPolicy" else None)
    try:
        if golden:
            sets = []
            for ref in golden.get("configMaps") or []:
                directory = corpus / ref["name"]
                if not directory.is_dir():
                    raise _Unusable(f"{directory}: missing (spec.goldenCorpus names "
                                    f"ConfigMap {ref['name']})")
                label = ref["label"]
                bound = ref.get("atMost" if label == "ham" else "atLeast") or "TAG"
                sets.append(GoldenSet(str(directory), label, bound, messages_in(directory)))
            for ref in golden.get("directories") or []:
                # DIR stands for the namespace's folder of the golden-corpus volume.
                directory = corpus / ref["path"]
                if not directory.is_dir():
                    raise _Unusable(f"{directory}: missing (spec.goldenCorpus names "
                                    f"directory {ref['path']})")
                label = ref["label"]
                bound = ref.get("atMost" if label == "ham" else "atLeast") or "TAG"
                sets.append(GoldenSet(str(directory), label, bound, messages_in(directory)))
            return sets
        sets = [GoldenSet(str(corpus / label), label, "TAG", messages_in(corpus / label))
                for label in ("ham", "spam") if (corpus / label).is_dir()]
    except (GoldenCorpusInvalid, KeyError, TypeError) as exc:
        raise _Unusable(f"{policy_path}: spec.goldenCorpus: {exc}") from None
    except OSError as exc:
        raise _Unusable(f"{corpus}: cannot read: {exc}") from None
    if not sets:
        raise _Unusable(f"{corpus}: holds neither ham/ nor spam/")
    return sets


def run_test(args: argparse.Namespace) -> int:
    from filter_server.engine.golden import GoldenCorpusInvalid, check_corpus

    try:
        candidate = _load_for_test(args.policy, args.model)
        baseline = _load_for_test(args.baseline, args.model) if args.baseline else None
        sets = _golden_sets(args.policy, args.corpus)
        report = check_corpus(candidate, sets, baseline)
    except _Unusable as exc:
        print(exc, file=sys.stderr)
        return 2
    except GoldenCorpusInvalid as exc:
        print(f"{args.corpus}: {exc}", file=sys.stderr)
        return 2
    for violation in report.violations:
        print(violation)
    summary = (f"{args.policy}: {report.checked} golden messages "
               f"({report.by_label['ham']} ham, {report.by_label['spam']} spam)")
    if report.passed:
        print(f"{summary}: all acceptable")
        return 0
    print(f"{summary}: {len(report.violations)} misclassified", file=sys.stderr)
    return 1
