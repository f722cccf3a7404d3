"""Client-side health checking keeps a `grpc.health.v1.Health/Watch` stream open on every
connection, and connections come and go all the time (each client reconnects every
maximum connection age). The server must keep answering while Watch streams start and end
by the hundred.

Found by the fault suite's long barrage: one pod in five runs stopped answering anything,
health checks included, for good. grpcio-health-checking's servicer sends a Watch's first
status while holding its lock and waits for the send to complete, which only gRPC's one
polling thread can report; when that thread was meanwhile running the close callback of
another, ended Watch, it waited for the same lock — a deadlock of the whole server (the
upstream report: grpc/grpc pull request 43403)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mailwarden.filter.v1 import filter_pb2_grpc
from testkit.filter import HAM, SERVICE, classify_request, wait_for

CHURNERS = 8
CHURN_SECONDS = 10.0


def _churn_watches(address: str, stop: threading.Event, counts: list[int]) -> None:
    """Open a connection, start a Watch, read its first status, end it; again and again."""
    while not stop.is_set():
        with grpc.insecure_channel(address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
            try:
                next(stream)
                counts[0] += 1
            except grpc.RpcError:
                pass
            stream.cancel()


def test_server_keeps_answering_while_watch_streams_start_and_end(servers,
                                                                  policy_dir: Path) -> None:
    server = servers(policy_dir).wait_serving()
    stop = threading.Event()
    counts = [0]
    churners = [threading.Thread(target=_churn_watches, args=(server.address, stop, counts),
                                 daemon=True) for _ in range(CHURNERS)]
    for thread in churners:
        thread.start()
    failures: list[str] = []
    answered = 0
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = filter_pb2_grpc.FilterStub(channel)
            started = time.monotonic()
            while time.monotonic() - started < CHURN_SECONDS:
                try:
                    health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=3)
                    stub.Classify(classify_request(HAM), timeout=3)
                    answered += 1
                except grpc.RpcError as exc:
                    failures.append(f"{time.monotonic() - started:.1f}s: {exc.code().name}")
                    break
                time.sleep(0.05)
    finally:
        stop.set()
        for thread in churners:
            thread.join(10)
    assert not failures, (f"the server stopped answering after {counts[0]} Watch streams "
                          f"and {answered} checks: {failures}")
    print(f"{counts[0]} Watch streams started and ended, {answered} checks answered")
    assert counts[0] > 200, f"only {counts[0]} Watch streams started: too few to test"
    assert server.health() == "SERVING"


def test_watch_streams_see_not_serving_on_sigterm(servers, policy_dir: Path) -> None:
    """Every open Watch learns of the drain (clients stop sending before the server stops)."""
    server = servers(policy_dir, "--drain-seconds", "3", "--grace-seconds", "1").wait_serving()
    statuses: list[list[str]] = [[] for _ in range(5)]
    channels = [grpc.insecure_channel(server.address) for _ in statuses]
    streams = [health_pb2_grpc.HealthStub(c).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE), timeout=20) for c in channels]

    def read(stream, into: list[str]) -> None:
        try:
            for reply in stream:
                into.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.RpcError:
            pass

    readers = [threading.Thread(target=read, args=(s, into), daemon=True)
               for s, into in zip(streams, statuses)]
    for thread in readers:
        thread.start()
    try:
        wait_for(lambda: all(s == ["SERVING"] for s in statuses), 10, "first statuses")
        server.signal(signal.SIGTERM)
        wait_for(lambda: all(s[-1:] == ["NOT_SERVING"] for s in statuses), 3,
                 "NOT_SERVING on every Watch within the drain")
        assert server.wait_exit(30) == 0
    finally:
        for channel in channels:
            channel.close()
    assert all(s == ["SERVING", "NOT_SERVING"] for s in statuses), statuses


def test_check_of_an_unknown_service_is_not_found(servers, policy_dir: Path) -> None:
    server = servers(policy_dir).wait_serving()
    assert server.health("no.such.Service") == "NOT_FOUND"
    assert server.health("") == "SERVING"
