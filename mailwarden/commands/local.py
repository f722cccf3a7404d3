"""`mailwarden local`: the data plane on one machine, in one command (see mailwarden_local)."""

from __future__ import annotations

import argparse
from pathlib import Path

EXTRA = "server,store"


def register(sub: argparse._SubParsersAction) -> None:
    from mailwarden_local.corpus import DEFAULT_CORPUS
    from mailwarden_local.main import DEFAULT_POLICY

    parser = sub.add_parser(
        "local", help="run 3 filter replicas on this machine and show them classifying",
        description="Local mode: trains the model on the SpamAssassin corpus (cached), starts "
        "filter replicas on 127.0.0.1 with the example SpamPolicy, classifies held-out spam "
        "and ham through the balancing client, then keeps serving until Ctrl-C.")
    parser.add_argument("--replicas", type=int, default=3, help="filter replicas (default 3)")
    parser.add_argument("--samples", type=int, default=5,
                        help="spam and ham messages each to classify in the demo (default 5)")
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY,
                        help="SpamPolicy or bare policy file (default examples/spampolicy.yaml)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help="SpamAssassin corpus directory (default .cache/corpus, fetched "
                        "by scripts/bootstrap.sh)")
    parser.add_argument("--dns-server", dest="dns_servers", action="append", default=[],
                        metavar="IP[:PORT]",
                        help="resolver for sender authentication (repeatable; default: this "
                        "machine's, from /etc/resolv.conf)")
    parser.add_argument("--once", "--exit-after-demo", dest="once", action="store_true",
                        help="stop the replicas and exit after the demo")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mailwarden_local.main import run as run_local

    return run_local(args)
