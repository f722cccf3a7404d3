"""`mailwarden train --ham DIR --spam DIR -o MODEL`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXTRA = "server"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train the statistical model from labelled raw messages",
        description="Every file under --ham and --spam (recursively, hidden files skipped) "
        "is one raw RFC 5322 message. Progress goes to stderr. See docs/model.md.")
    parser.add_argument("--ham", required=True, type=Path, help="directory of ham messages")
    parser.add_argument("--spam", required=True, type=Path, help="directory of spam messages")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="model file to write (gzip JSON, e.g. model.json.gz)")
    parser.add_argument("--max-kib", type=int, default=768,
                        help="largest model to write, KiB (default 768: it ships in a "
                        "ConfigMap, 1 MiB in all); the rarest tokens are dropped to fit")
    parser.add_argument("--calibration-folds", type=int, default=5, metavar="K",
                        help="cross-validation folds used to calibrate the spam probability "
                        "(default 5; 0 turns calibration off and reports raw combined "
                        "scores; needs at least 30 messages of each class)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from filter_server.bayes.train import train

    if args.max_kib < 1:
        print("mailwarden train: --max-kib must be at least 1", file=sys.stderr)
        return 2
    problem = _unwritable(args.output)
    if problem:  # before training, which takes a while, not after it
        print(f"mailwarden train: -o {args.output}: {problem}", file=sys.stderr)
        return 2
    try:
        model = train(args.ham, args.spam, max_bytes=args.max_kib * 1024,
                      calibration_folds=args.calibration_folds)
        data = model.to_bytes()
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(args.output)
    except (OSError, ValueError) as exc:  # FileNotFoundError is an OSError
        print(f"mailwarden train: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(data) / 1024:.0f} KiB, {len(model)} tokens)",
          file=sys.stderr)
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
