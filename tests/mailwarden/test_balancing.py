"""The client against 3 real replicas: per-request balancing, surviving a replica's SIGKILL
under continuous load without a failed call, and health-aware draining."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mailwarden.client import ClassifyError, FilterClient
from testkit.filter import HAM, SPAM, wait_for


@pytest.fixture
def replicas(servers, policy_dir: Path):
    started = [servers(policy_dir, "--drain-seconds", "30") for _ in range(3)]
    return [s.wait_serving() for s in started]


def served(server) -> float:
    return server.metric("mailwarden_filter_requests_total", method="Classify", code="OK")


def reach_all(client: FilterClient, replicas) -> None:
    """A new channel connects to the replicas in parallel and round robin uses each once it
    is connected and SERVING; call until all have answered (bounded in time)."""
    def all_served() -> bool:
        client.classify(HAM)
        return all(served(r) > 0 for r in replicas)

    wait_for(all_served, 30, "every replica to get a call", interval=0)


def test_every_replica_gets_traffic(replicas) -> None:
    with FilterClient(addresses=[r.address for r in replicas]) as client:
        reach_all(client, replicas)
        before = [served(r) for r in replicas]
        hashes = {client.classify(SPAM if i % 2 else HAM).policy_hash for i in range(60)}
    assert len(hashes) == 1
    counts = [served(r) - b for r, b in zip(replicas, before)]
    assert sum(counts) == 60
    assert all(c >= 15 for c in counts), f"round robin should spread calls: {counts}"


def test_sigkill_of_a_replica_under_load_fails_no_call(replicas) -> None:
    client = FilterClient(addresses=[r.address for r in replicas], deadline=20)
    ok = [0]
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                client.classify(SPAM)
                ok[0] += 1
            except ClassifyError as exc:
                failures.append(str(exc))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: ok[0] >= 100, 60, "load to get going")
        victim = replicas[1]
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait(30)
        before = [served(replicas[0]), served(replicas[2])]
        at_kill = ok[0]
        wait_for(lambda: ok[0] >= at_kill + 300, 120, "300 more calls after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        client.close()
    assert failures == [], failures[:5]
    after = [served(replicas[0]), served(replicas[2])]
    assert after[0] > before[0] and after[1] > before[1], "the survivors took the load"


def test_a_draining_replica_gets_no_new_calls(replicas) -> None:
    draining = replicas[0]
    with FilterClient(addresses=[r.address for r in replicas]) as client:
        reach_all(client, replicas)
        draining.signal(signal.SIGTERM)  # NOT_SERVING now, serving for 30 more seconds
        wait_for(lambda: draining.health() == "NOT_SERVING", 10, "NOT_SERVING")

        def quiet_for_30_calls() -> bool:
            before = served(draining)
            for _ in range(30):
                client.classify(HAM)
            return served(draining) == before

        # Client-side health checking sees NOT_SERVING through its Watch stream; once it
        # has, round robin skips the replica although it still answers.
        wait_for(quiet_for_30_calls, 30, "the client to stop sending to the draining replica")
        assert draining.process.poll() is None, "still draining, still up"
        assert all(served(r) > 0 for r in replicas[1:])


def test_calls_succeed_across_connection_age_goaways(servers, policy_dir: Path) -> None:
    """The server closes connections after --max-connection-age-ms (so clients re-resolve
    and reach new pods); the client reconnects without failing a call."""
    server = servers(policy_dir, "--max-connection-age-ms", "200",
                     "--max-connection-age-grace-ms", "2000").wait_serving()
    failures = []
    with FilterClient(addresses=[server.address]) as client:
        deadline = time.monotonic() + 3  # spans about 15 connection ages
        calls = 0
        while time.monotonic() < deadline:
            try:
                client.classify(HAM)
            except ClassifyError as exc:
                failures.append(str(exc))
            calls += 1
    assert failures == [] and calls > 20
