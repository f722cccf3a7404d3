"""`mailwarden` command line. Each subcommand lives in its own module under
mailwarden/commands/ and registers its arguments; the component it runs is imported only
when it runs, so `pip install mailwarden` (no extras) still gives the client commands.

A command module that needs an extra names it in `EXTRA`; when one of that extra's
libraries is missing, the command says which `pip install` fixes it instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "mailwarden.commands.serve",
    "mailwarden.commands.classify",
    "mailwarden.commands.learn",
    "mailwarden.commands.local",
    "mailwarden.commands.train",
    "mailwarden.commands.policy",
    "mailwarden.commands.corpus",
    "mailwarden.commands.operator",
    "mailwarden.commands.unsubscribe_server",
    "mailwarden.commands.unsubscribe",
    "mailwarden.commands.token",
)
# Top-level packages of this distribution: a missing one is a broken install, not an extra.
OWN_PACKAGES = frozenset({"mailwarden", "filter_server", "unsubscribe_store",
                          "mailwarden_operator", "mailwarden_local"})
EXIT_MISSING_EXTRA = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailwarden",
        description="Mailwarden: highly available email filtering for Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        before = set(sub.choices)
        module.register(sub)
        for command in set(sub.choices) - before:
            sub.choices[command].set_defaults(extra=getattr(module, "EXTRA", None))
    return parser


def missing_extra_message(command: str, extra: str | None, missing: str) -> str | None:
    """What to tell the user when `command` could not import `missing`, or None when that
    is not a missing optional dependency (then the error is a bug and must surface)."""
    top = missing.partition(".")[0]
    if extra is None or not top or top in OWN_PACKAGES:
        return None
    extras = ",".join(extra.split(","))
    return (f"mailwarden {command}: the Python package {top!r} is not installed; this "
            f"command needs `pip install 'mailwarden[{extras}]'`")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as exc:
        message = missing_extra_message(args.command, args.extra, exc.name or "")
        if message is None:
            raise
        print(message, file=sys.stderr)
        return EXIT_MISSING_EXTRA


if __name__ == "__main__":
    sys.exit(main())
