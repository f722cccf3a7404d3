#!/usr/bin/env python3
"""Peak memory and outcomes of one filter worker under the request abuse of issue 20.

    .venv/bin/python benchmarks/memory_abuse.py [--memory-limit-bytes 536870912]
        [--only SCENARIO]

Starts a real `mailwarden serve --workers 1` (the tests' small policy) on loopback for each
scenario and samples its resident memory every 10 ms while:

  streams     64 ClassifyStreams, a connection each, each sending one 24 MiB message
  recipients  16 Classify calls of an 88-byte message and 19 MiB of recipients ("a@b.c",
              2.8 million of them), announced
              as 88 bytes (`mailwarden-message-bytes`)
  announce    3 Classify calls announcing 25 MiB that never send it, then 20 ordinary calls
              (5 s deadline) while they wait
  idle        64 ClassifyStreams on one connection that never send, then 20 ordinary
              calls on another connection

Printed per scenario, one JSON line: the peak RSS, the answers by status code, whether
health said SERVING, and how long the idle calls lived (the server's receive time limit;
before it, the connection's maximum age). docs/server.md ("Memory") quotes the figures,
before (a checkout of 9e0f3b1) and after. Figures are printed, never asserted: this is a
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
SERVICE = "/mailwarden.filter.v1.Filter/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-limit-bytes", type=int, default=512 * MIB,
                        help="passed to the server (default: the operator's 512 MiB)")
    parser.add_argument("--only", choices=("streams", "recipients", "announce", "idle"),
                        help="run one scenario")
    args = parser.parse_args(argv)

    import grpc

    from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
    from testkit.filter import HAM, Server, classify_request, mini_policy, outcomes, \
        write_policy
    from tests.filter_server.server.test_memory import PeakRss

    workdir = Path(tempfile.mkdtemp(prefix="mailwarden-memory-abuse-"))
    write_policy(workdir / "policy", mini_policy(1))

    def channel(server: Server, key: str) -> grpc.Channel:
        # channels with equal arguments share one connection
        return grpc.insecure_channel(server.address, [("grpc.max_send_message_length", -1),
                                                      ("grpc.primary_user_agent", key)])

    def counted(codes: list[str]) -> dict[str, int]:
        return {code: codes.count(code) for code in sorted(set(codes))}

    def streams(server: Server) -> dict:
        request = classify_request(b"From: a@example.com\r\nSubject: x\r\n\r\n"
                                   + b"word " * (24 * MIB // 5))
        codes: list[str] = []

        def one(i: int) -> None:
            with channel(server, f"s{i}") as ch:
                try:
                    for _ in filter_pb2_grpc.FilterStub(ch).ClassifyStream(iter([request]),
                                                                            timeout=60):
                        codes.append("OK")
                except grpc.RpcError as exc:
                    codes.append(exc.code().name)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"answers": counted(codes)}

    def recipients(server: Server) -> dict:
        request = filter_pb2.ClassifyRequest(
            request_id="r", message=HAM[:88], envelope=filter_pb2.Envelope(
                mail_from="x@example.com",
                recipients=["a@b.c"] * (19 * MIB // 7)))
        with channel(server, "r") as ch:
            stub = filter_pb2_grpc.FilterStub(ch)
            codes = outcomes([stub.Classify.future(request, timeout=60, metadata=(
                ("mailwarden-message-bytes", "88"),)) for _ in range(16)])
        return {"answers": counted(codes)}

    def idle(server: Server, kind: str) -> dict:
        release = threading.Event()

        def never():
            release.wait()
            return
            yield

        ch = channel(server, "idle")
        if kind == "announce":
            method = ch.stream_unary(
                SERVICE + "Classify",
                request_serializer=filter_pb2.ClassifyRequest.SerializeToString,
                response_deserializer=filter_pb2.ClassifyResponse.FromString)
            held = [method.future(never(), metadata=(
                ("mailwarden-message-bytes", str(25 * MIB)),)) for _ in range(3)]
        else:
            stub = filter_pb2_grpc.FilterStub(ch)
            held = [stub.ClassifyStream(never()) for _ in range(64)]
        started = time.monotonic()
        time.sleep(1)
        request = classify_request(HAM)
        with channel(server, "ordinary") as other:
            stub = filter_pb2_grpc.FilterStub(other)
            codes = outcomes([stub.Classify.future(request, timeout=5, metadata=(
                ("mailwarden-request-bytes", str(request.ByteSize())),))
                for _ in range(20)])
        health = server.health()
        while not all(call.done() for call in held) and time.monotonic() - started < 60:
            time.sleep(0.1)
        lived = time.monotonic() - started
        release.set()
        ch.close()
        return {"ordinary calls": counted(codes), "health": health,
                "idle calls lived (s, at most 60 measured)": round(lived, 1),
                "idle calls ended": counted(outcomes(held)) if kind == "announce"
                else counted([call.code().name if call.done() else "still open"
                              for call in held])}

    scenarios = {"streams": streams, "recipients": recipients,
                 "announce": lambda s: idle(s, "announce"), "idle": lambda s: idle(s, "idle")}
    for name, run in scenarios.items():
        if args.only and name != args.only:
            continue
        server = Server(workdir, workdir / "policy",
                        ["--memory-limit-bytes", str(args.memory_limit_bytes)], 1)
        try:
            server.wait_serving()
            with PeakRss(server.process.pid) as rss:
                result = run(server)
            print(json.dumps({"scenario": name, "peak_rss_mib": round(rss.peak / MIB),
                              "limit_mib": args.memory_limit_bytes // MIB,
                              "server_alive": server.process.poll() is None, **result}),
                  flush=True)
        finally:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
