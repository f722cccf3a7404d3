"""SuppressionCache against real unsubscribe server processes: an unsubscribe becomes visible,
the transactional bypass rules, resubscribes, freshness/lag/connected state, and Watch resume
after the server is killed mid-stream (no gap, no re-snapshot)."""

from __future__ import annotations

import threading
import time
import uuid

import grpc
import pytest

from filter_server.server.suppression_cache import SuppressionCache, SuppressionCacheCollector
from mailwarden.suppression import MailClass
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from testkit.store import RESUBSCRIBE_TOKEN


def unsub(stub, address, scope="news", reason=pb.UNSUBSCRIBE, key="", timeout=30):
    return stub.Unsubscribe(pb.UnsubscribeRequest(address=address, scope=scope, reason=reason,
                                                  source="test", idempotency_key=key),
                            timeout=timeout)


@pytest.fixture
def cache_for():
    caches: list[SuppressionCache] = []

    def make(target: str, **kw) -> SuppressionCache:
        cache = SuppressionCache(target, heartbeat_seconds=0.2, **kw).start()
        caches.append(cache)
        assert cache.wait_ready(30), "cache never loaded its snapshot"
        return cache
    yield make
    for cache in caches:
        cache.stop()


def test_snapshot_then_unsubscribe_becomes_visible(store, cache_for):
    stub = store.stub()
    unsub(stub, "before@example.com")
    cache = cache_for(store.target)
    assert cache.suppressed(["Before@Example.com", "after@example.com"], "news") == \
        ["Before@Example.com"]
    ack = unsub(stub, "After@example.com")
    assert cache.wait_for_sequence(ack.sequence, 30)
    assert cache.suppressed(["before@example.com", "AFTER@example.com"], "News") == \
        ["before@example.com", "AFTER@example.com"]
    stats = cache.stats()
    assert stats.ready and stats.connected and stats.size == 2 and stats.snapshots == 1


def test_transactional_bypass_rules(store, cache_for):
    stub = store.stub()
    unsub(stub, "list@example.com", scope="news")
    unsub(stub, "global@example.com", scope="*")
    last = unsub(stub, "complaint@example.com", scope="news", reason=pb.COMPLAINT)
    cache = cache_for(store.target)
    assert cache.wait_for_sequence(last.sequence, 30)
    everyone = ["list@example.com", "global@example.com", "complaint@example.com",
                "fine@example.com", "not an address"]
    assert cache.suppressed(everyone, "news", MailClass.BULK) == everyone[:3]
    # Transactional mail bypasses the list unsubscribe, never global or complaint.
    assert cache.suppressed(everyone, "news", MailClass.TRANSACTIONAL) == everyone[1:3]
    assert cache.suppressed(everyone, "news", pb.TRANSACTIONAL) == everyone[1:3]
    assert cache.suppressed(everyone, "", MailClass.TRANSACTIONAL) == ["global@example.com"]
    assert cache.suppressed(everyone, "other-list", "bulk") == ["global@example.com"]


def test_resubscribe_and_escalation_reach_the_cache(store, cache_for):
    stub = store.stub()
    unsub(stub, "r@example.com", scope="news")
    cache = cache_for(store.target)
    escalated = unsub(stub, "r@example.com", scope="news", reason=pb.COMPLAINT)
    assert cache.wait_for_sequence(escalated.sequence, 30)
    assert cache.suppressed(["r@example.com"], "news", "transactional") == ["r@example.com"]
    removed = stub.Resubscribe(
        pb.ResubscribeRequest(address="r@example.com", scope="news", source="test"),
        metadata=(("authorization", f"Bearer {RESUBSCRIBE_TOKEN}"),))
    assert cache.wait_for_sequence(removed.sequence, 30)
    assert cache.suppressed(["r@example.com"], "news") == []
    assert cache.stats().size == 0


def test_freshness_and_metrics_follow_the_connection(store, cache_for):
    cache = cache_for(store.target, stale_after=1.0)
    deadline = time.monotonic() + 30
    while not cache.is_fresh() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.is_fresh() and cache.connected
    families = {m.name: m.samples[0].value for m in SuppressionCacheCollector(cache).collect()}
    assert families["mailwarden_suppression_cache_connected"] == 1
    assert families["mailwarden_suppression_cache_lag_sequences"] == 0
    store.kill9()
    deadline = time.monotonic() + 30
    while (cache.connected or cache.is_fresh()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cache.connected and not cache.is_fresh()
    assert cache.age_seconds > 1.0
    store.start()
    deadline = time.monotonic() + 60
    while not cache.is_fresh() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cache.is_fresh() and cache.stats().reconnects >= 1


def test_watch_resume_after_server_kill_misses_nothing(backend, start_store, store_args,
                                                      cache_for):
    """A writer keeps unsubscribing while the server the cache watches is SIGKILLed and
    restarted. With postgres a second server on the same database keeps taking writes during
    the outage; with SQLite (one process owns the file) the writer retries through the restart
    with idempotency keys. The cache must end with every change exactly once, in order,
    without a second snapshot."""
    watched = start_store(store_args, name="watched")
    writer_store = start_store(store_args, name="writer") if backend == "postgres" else watched
    seen: list[int] = []
    cache = cache_for(watched.target, on_change=lambda c: seen.append(c.sequence))
    total = 120
    acked: list[tuple[str, int]] = []
    done = threading.Event()

    def writer() -> None:
        with grpc.insecure_channel(writer_store.target) as channel:
            stub = pb_grpc.UnsubscribeStoreStub(channel)
            for i in range(total):
                address, key = f"resume{i}@example.com", str(uuid.uuid4())
                give_up = time.monotonic() + 120
                while time.monotonic() < give_up:  # retry through the outage, same key
                    try:
                        acked.append((address, unsub(stub, address, key=key, timeout=5).sequence))
                        break
                    except grpc.RpcError:
                        time.sleep(0.1)
                time.sleep(0.01)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 120
    while len(acked) < 40:
        assert time.monotonic() < deadline, "writer made no progress:\n" + watched.log()
        time.sleep(0.01)
    watched.kill9()
    killed_at = len(acked)
    while backend == "postgres" and len(acked) < killed_at + 30:
        assert time.monotonic() < deadline, "writer made no progress:\n" + writer_store.log()
        time.sleep(0.01)   # changes committed while the watched server is down
    watched.start()
    thread.join(120)
    assert done.is_set()
    head = max(seq for _, seq in acked)
    assert cache.wait_for_sequence(head, 60), cache.stats()
    assert seen == list(range(1, head + 1)), "cache saw a gap or a duplicate"
    assert head == total
    stats = cache.stats()
    assert stats.snapshots == 1 and stats.reconnects >= 1
    assert cache.suppressed([a for a, _ in acked], "news") == [a for a, _ in acked]
