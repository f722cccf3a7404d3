"""`mailwarden corpus split`: the deterministic train/test split of the SpamAssassin corpus."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from mailwarden_local.corpus import DEFAULT_CORPUS

    parser = sub.add_parser("corpus", help="work with the SpamAssassin public corpus")
    csub = parser.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    split = csub.add_parser(
        "split", help="lay the corpus out as OUT/{train,test}/{ham,spam} (symlinks)",
        description="Test split: int(sha256('<group>/<file>')[:8], 16) %% 5 == 0 (~20%%).")
    split.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                       help=f"unpacked corpus (default {DEFAULT_CORPUS})")
    split.add_argument("--out", type=Path, required=True, help="output directory")
    split.set_defaults(func=run_split)


def run_split(args: argparse.Namespace) -> int:
    from mailwarden_local.corpus import split_corpus

    try:
        split = split_corpus(args.corpus, args.out)
    except FileNotFoundError as exc:
        print(f"mailwarden corpus split: {exc}", file=sys.stderr)
        return 2
    for part in ("train", "test"):
        print(f"{part}: {len(split.files(part, 'ham'))} ham, "
              f"{len(split.files(part, 'spam'))} spam")
    return 0
