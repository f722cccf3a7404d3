"""`mailwarden train --ham PATH... --spam PATH... -o MODEL [--policy P --policy-out OUT]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXTRA = "server"
ACTIONS = ("tag", "quarantine", "reject")


def _target(text: str) -> tuple[str, float]:
    action, sep, value = text.partition("=")
    if not sep or action.lower() not in ACTIONS:
        raise argparse.ArgumentTypeError(f"expected ACTION=RATE with ACTION one of "
                                         f"{', '.join(ACTIONS)} (got {text!r})")
    try:
        rate = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a rate (e.g. 0.001 or 0.1%)") \
            from None
    if not 0 <= rate < 1:
        raise argparse.ArgumentTypeError(f"a false-positive rate is in [0, 1), got {rate}")
    return action.upper(), rate


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train the statistical model and fit the policy's scores",
        description="Read labelled mail (Maildir folders, mbox files, single message files "
        "or directories of them, recursively; hidden files skipped), train the model, fit "
        "the rule scores, the model weight and a threshold per action to target "
        "false-positive rates, and print the expected false-positive rate and recall of "
        "each action on held-out messages. Progress goes to stderr. See docs/model.md.")
    parser.add_argument("--ham", required=True, type=Path, nargs="+", action="extend",
                        metavar="PATH", help="ham: Maildir, mbox, message file or directory")
    parser.add_argument("--spam", required=True, type=Path, nargs="+", action="extend",
                        metavar="PATH", help="spam: Maildir, mbox, message file or directory")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="model file to write (gzip JSON, e.g. model.json.gz)")
    parser.add_argument("--policy", type=Path,
                        help="policy (or SpamPolicy resource) whose rule scores, model weight "
                        "and thresholds are fitted (default: the model alone)")
    parser.add_argument("--policy-out", type=Path,
                        help="write the policy with the fitted scores and thresholds here "
                        "(YAML; a SpamPolicy resource stays one)")
    parser.add_argument("--target-fpr", type=_target, action="append", default=[],
                        metavar="ACTION=RATE",
                        help="highest share of ham an action may reach, e.g. tag=0.2%% "
                        "(defaults: tag 0.2%%, quarantine 0.1%%, reject 0.01%%)")
    parser.add_argument("--max-kib", type=int, default=768,
                        help="largest model to write, KiB (default 768: it ships in a "
                        "ConfigMap, 1 MiB in all); the rarest tokens are dropped to fit")
    parser.add_argument("--calibration-folds", type=int, default=5, metavar="K",
                        help="cross-validation folds used to calibrate the spam probability "
                        "(default 5; 0 turns calibration off and reports raw combined "
                        "scores; needs at least 30 messages of each class)")
    parser.set_defaults(func=run)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _policy_document(path: Path | None):
    """(the document as written, its policy part, the validated and defaulted policy)."""
    import yaml

    from filter_server.policy.validate import apply_defaults, load_policy_file, unwrap_policy
    if path is None:
        return None, {}, apply_defaults({})
    policy = load_policy_file(path, base_dir=path.parent)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document, unwrap_policy(document), policy


def run(args: argparse.Namespace) -> int:
    import yaml

    from filter_server.bayes.sources import SourceError
    from filter_server.engine.fitting import compile_policy, fit, fitted_policy, load_examples
    from filter_server.policy.validate import PolicyInvalid

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.max_kib < 1:
        say("mailwarden train: --max-kib must be at least 1")
        return 2
    if args.calibration_folds == 1 or args.calibration_folds < 0:
        say("mailwarden train: calibration folds must be 0 (no calibration) or at least 2")
        return 2
    problem = _unwritable(args.output)
    if problem:  # before training, which takes a while, not after it
        print(f"mailwarden train: -o {args.output}: {problem}", file=sys.stderr)
        return 2
    try:
        document, written, policy = _policy_document(args.policy)
        rules_only = compile_policy(policy, None)
        ham = [e for path in args.ham for e in load_examples([path], False, rules_only, say)]
        spam = [e for path in args.spam for e in load_examples([path], True, rules_only, say)]
        if not ham or not spam:
            raise ValueError(f"need at least one ham and one spam message (found {len(ham)} "
                             f"ham in {', '.join(map(str, args.ham))}, {len(spam)} spam in "
                             f"{', '.join(map(str, args.spam))})")
        result = fit(ham + spam, policy, targets=dict(args.target_fpr),
                     max_bytes=args.max_kib * 1024,
                     calibration_folds=args.calibration_folds, progress=say)
        model = result.model
        data = model.to_bytes()
        _write(args.output, data)
    except PolicyInvalid as exc:
        for error in exc.errors:
            say(f"mailwarden train: {args.policy}: {error}")
        return 2
    except (OSError, ValueError, SourceError) as exc:  # FileNotFoundError is an OSError
        say(f"mailwarden train: {exc}")
        return 2
    say(f"wrote {args.output} ({len(data) / 1024:.0f} KiB, {len(model)} tokens)")
    print(f"expected rates per action on {result.rates_on} messages "
          f"(false positives: ham reaching the action; recall: spam reaching it):")
    for line in result.rates:
        print("  " + line.line())
    for note in result.notes:
        print(f"  note: {note}")
    print(f"model weight {result.weight:.2f}; thresholds tag {result.thresholds['TAG']}, "
          f"quarantine {result.thresholds['QUARANTINE']}, reject {result.thresholds['REJECT']}")
    if args.policy_out is not None:
        patched = fitted_policy(written or {}, result.scores, result.weight,
                                result.thresholds)
        if isinstance(document, dict) and document.get("kind") == "SpamPolicy":
            document.setdefault("spec", {})["policy"] = patched
            out_doc = document
        else:
            out_doc = patched
        try:
            _write(args.policy_out, yaml.safe_dump(out_doc, sort_keys=False).encode())
        except OSError as exc:
            say(f"mailwarden train: {exc}")
            return 2
        say(f"wrote {args.policy_out} (fitted scores, model weight and thresholds)")
    return 0


def _unwritable(path: Path) -> str | None:
    """Why a file cannot be written at `path` (None: it can, as far as can be told)."""
    directory = path.parent
    if not directory.is_dir():
        return f"directory {directory} does not exist"
    if path.is_dir():
        return "is a directory"
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "permission denied"
    return None
