"""`mailwarden train --ham DIR --spam DIR -o MODEL`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train the statistical model from labelled raw messages",
        description="Every file under --ham and --spam (recursively, hidden files skipped) "
        "is one raw RFC 5322 message. Progress goes to stderr.")
    parser.add_argument("--ham", required=True, type=Path, help="directory of ham messages")
    parser.add_argument("--spam", required=True, type=Path, help="directory of spam messages")
    parser.add_argument("-o", "--output", required=True, type=Path,
                        help="model file to write (gzip JSON, e.g. model.json.gz)")
    parser.add_argument("--max-kib", type=int, default=768,
                        help="largest model to write, KiB (default 768: it ships in a "
                        "ConfigMap, 1 MiB in all)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from filter_server.bayes.train import train

    try:
        model = train(args.ham, args.spam, max_bytes=args.max_kib * 1024)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mailwarden train: {exc}", file=sys.stderr)
        return 2
    data = model.to_bytes()
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.output)
    print(f"wrote {args.output} ({len(data) / 1024:.0f} KiB, {len(model)} tokens)",
          file=sys.stderr)
    return 0
