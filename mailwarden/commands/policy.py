"""`mailwarden policy validate FILE...` and `mailwarden policy digest MESSAGE...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
