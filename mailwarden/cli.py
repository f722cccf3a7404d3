"""`mailwarden` command line. Each subcommand lives in its own module under
mailwarden/commands/ and registers its arguments; heavy imports happen only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "mailwarden.commands.serve",
    "mailwarden.commands.classify",
    "mailwarden.commands.local",
    "mailwarden.commands.train",
    "mailwarden.commands.policy",
    "mailwarden.commands.corpus",
    "mailwarden.commands.operator",
    "mailwarden.commands.unsubscribe",
    "mailwarden.commands.token",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailwarden",
        description="Mailwarden: highly available email filtering for Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command not built yet on this branch
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
