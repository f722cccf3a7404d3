#!/usr/bin/env python3
"""Peak memory of one filter worker under bursts of large messages.

    .venv/bin/python benchmarks/memory_burst.py [--mib 20] [--concurrency 32] [--rounds 3]
        [--deadline 5] [--memory-limit-bytes 536870912] [--announce]

Starts a real `mailwarden serve --workers 1` (the tests' small policy) on loopback, sends
`--rounds` waves of `--concurrency` Classify calls at once, each a `--mib` MiB message, and
samples the server's resident memory every 10 ms. With --announce the calls carry the
message size (`mailwarden-message-bytes`, as `mailwarden.client` sends it). Printed: the
answers by status code, the peak RSS against the limit, the memory budget the server
derived, and the time taken. docs/server.md ("Memory") quotes its figures; run it on a
checkout from before the memory budget (with no --memory-limit-bytes) for the comparison.
Figures are printed, never asserted: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=20, help="size of each message, MiB")
    parser.add_argument("--concurrency", type=int, default=32, help="calls sent at once")
    parser.add_argument("--rounds", type=int, default=3, help="waves of calls")
    parser.add_argument("--deadline", type=float, default=5.0, help="per call, seconds")
    parser.add_argument("--memory-limit-bytes", type=int, default=None,
                        help="passed to the server (default: the server's own default)")
    parser.add_argument("--announce", action="store_true",
                        help="send the message size in the call metadata")
    args = parser.parse_args(argv)

    import grpc

    from mailwarden.client import MESSAGE_BYTES_METADATA
    from mailwarden.filter.v1 import filter_pb2_grpc
    from testkit.filter import HAM, Server, classify_request, mini_policy, outcomes, \
        write_policy
    from tests.filter_server.server.test_memory import PeakRss

    workdir = Path(tempfile.mkdtemp(prefix="mailwarden-memory-burst-"))
    write_policy(workdir / "policy", mini_policy(1))
    extra = [] if args.memory_limit_bytes is None else \
        ["--memory-limit-bytes", str(args.memory_limit_bytes)]
    server = Server(workdir, workdir / "policy", extra, 1).wait_serving()
    try:
        body = b"Shall we meet at noon? We could walk to the park afterwards.\r\n"
        message = HAM + body * (args.mib * MIB // len(body))
        metadata = ((MESSAGE_BYTES_METADATA, str(len(message))),) if args.announce else ()
        codes: Counter[str] = Counter()
        started = time.monotonic()
        with PeakRss(server.process.pid) as rss, \
                grpc.insecure_channel(server.address,
                                      [("grpc.max_send_message_length", -1)]) as channel:
            stub = filter_pb2_grpc.FilterStub(channel)
            for _round in range(args.rounds):
                codes.update(outcomes([
                    stub.Classify.future(classify_request(message, f"m{i}"),
                                         timeout=args.deadline, metadata=metadata)
                    for i in range(args.concurrency)]))
        seconds = time.monotonic() - started
        budget = server.metric("mailwarden_filter_memory_budget_bytes")
        limit = f"{args.memory_limit_bytes / MIB:.0f} MiB" if args.memory_limit_bytes \
            else "server default"
        print(f"{args.rounds} waves of {args.concurrency} x {args.mib} MiB, deadline "
              f"{args.deadline:g} s, memory limit {limit}, size announced: {args.announce}")
        print(f"  answers: {dict(codes)}")
        print(f"  peak RSS {rss.peak / MIB:.0f} MiB; budget for messages "
              f"{budget / MIB:.0f} MiB; {seconds:.1f} s")
    finally:
        server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
