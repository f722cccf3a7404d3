#!/usr/bin/env python3
"""Memory and CPU of DKIM parsing and relaxed body canonicalization on a 20 MiB message of
short lines (issue 20: one message must not take a worker past its memory limit).

    .venv/bin/python benchmarks/auth_memory.py [--source DIR] [--mib 20]

Two child processes, one per step, each printing one JSON line: the growth of its peak
RSS and its CPU seconds.

  parse      verify_dkim on a message with a DKIM-Signature (no key fetched: dkimpy parses
             the message, the signature is a permerror); every such message pays this
  canonical  dkimpy's relaxed body canonicalization of the body (paid once a key is found,
             and a sender controls its own key)

--source DIR measures another checkout's code (e.g. `git archive main | tar -x -C DIR`).
Figures are printed, never asserted (tests/filter_server/auth/test_units.py bounds the
traced peak).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
step, size = sys.argv[2], int(sys.argv[3])
from filter_server.auth.dkim import verify_dkim
from filter_server.auth.headers import header_fields
from dkim.canonicalization import Relaxed
head = (b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel; "
        b"h=from; bh=YQ==; b=YQ==\r\nFrom: a@example.com\r\n\r\n")
if step == "parse":
    raw = head + b"x \t\n" * (size // 4)
    run = lambda: verify_dkim(raw, header_fields(raw), {})
else:
    body = b"x \t\r\n" * (size // 5)
    run = lambda: Relaxed.canonicalize_body(body)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.process_time()
run()
print(json.dumps({"step": step, "mib": round(size / 2**20),
                  "peak_growth_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                            - base) / 1024),
                  "cpu_seconds": round(time.process_time() - started, 2)}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO,
                        help="the checkout whose code is measured (default: this one)")
    parser.add_argument("--mib", type=int, default=20, help="message size in MiB")
    args = parser.parse_args(argv)
    for step in ("parse", "canonical"):
        done = subprocess.run([sys.executable, "-c", CHILD, str(args.source.resolve()), step,
                               str(args.mib * 2**20)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            print(json.dumps({"step": step, "error": done.stderr.strip()[-200:]}))
        else:
            print(done.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
