"""Issue 14 follow-up: while the unsubscribe store cannot read its database, its Watch
heartbeats must not vouch for the head it read last. A filter pod's suppression cache says
SUPPRESSION_FRESH while heartbeats arrive; if the store kept sending them from memory during
a database outage, every pod would keep answering FRESH although unsubscribes may be
committed where the store cannot see them (a promoted standby, another replica's database
connection), or the store simply cannot know.

A real store process on its own real PostgreSQL, followed by the real SuppressionCache: the
database hangs (every postgres process SIGSTOPped), then crashes (SIGKILL) and restarts. In
each outage the cache must leave FRESH within the store's vouching bound plus its own
``stale_after`` (plus slack for a loaded machine), stay non-FRESH while the outage lasts,
and afterwards be FRESH again holding every acknowledged unsubscribe — including one
acknowledged only once the database answered again."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from filter_server.server.suppression_cache import SuppressionCache
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from testkit.pg import PgCluster
from testkit.processes import scraped_total
from unsubscribe_store.feed import DEFAULT_POLL_SECONDS, VOUCH_POLLS

STALE_AFTER = 1.0
# A heartbeat vouches for a head the store read at most this long ago (unsubscribe_store/
# feed.py), and a heartbeat is sent at most HEARTBEAT seconds after the one before.
VOUCH = VOUCH_POLLS * DEFAULT_POLL_SECONDS
HEARTBEAT = 0.5          # the store's minimum interval (the cache asks for 0.2)
SLACK = 2.0              # a loaded 2-core machine
FRESH_LIMIT = VOUCH + HEARTBEAT + STALE_AFTER + SLACK
CONFIRMED_AGE = "mailwarden_unsubscribe_feed_confirmed_age_seconds"
# How long a stale cache is watched for coming back FRESH while the outage still lasts.
HOLD = 2.0


def unsub(stub, address: str, timeout: float = 30) -> int:
    return stub.Unsubscribe(pb.UnsubscribeRequest(address=address, scope="news",
                                                  source="test"), timeout=timeout).sequence


def fresh_for(cache: SuppressionCache, limit: float) -> float:
    """Seconds from now until the cache is no longer FRESH (stops looking at ``limit``)."""
    started = time.monotonic()
    while cache.is_fresh() and time.monotonic() - started < limit:
        time.sleep(0.02)
    return time.monotonic() - started


def never_fresh_for(cache: SuppressionCache, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cache.is_fresh():
            return False
        time.sleep(0.02)
    return True


def wait_fresh_with(cache: SuppressionCache, sequence: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cache.is_fresh() and cache.applied_sequence >= sequence:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def cluster():
    with PgCluster() as c:
        yield c


def test_cache_is_not_fresh_while_the_store_cannot_read_its_database(cluster, start_store,
                                                                     tmp_path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(cluster.create_database("app"))
    store = start_store(["--store", "postgres", "--dsn-file", str(dsn_file)])
    stub = store.stub()
    acked = {"before@example.com": unsub(stub, "before@example.com")}
    cache = SuppressionCache(store.target, heartbeat_seconds=0.2,
                             stale_after=STALE_AFTER).start()
    try:
        assert wait_fresh_with(cache, acked["before@example.com"], 30), cache.stats()
        primary = cluster.primary

        # 1. The database hangs: every process of it stopped (a frozen disk, a VM paused).
        #    An unsubscribe sent meanwhile is acknowledged only once it answers.
        late: dict[str, int] = {}
        writer = threading.Thread(target=lambda: late.update(
            {"during@example.com": unsub(stub, "during@example.com", timeout=120)}))
        with primary.frozen():
            writer.start()
            hung_fresh = fresh_for(cache, FRESH_LIMIT + 1)
            stayed_stale = never_fresh_for(cache, HOLD)
            # What the store's owner sees: the feed has not read the head for that long.
            unconfirmed = scraped_total(store.metrics_url, CONFIRMED_AGE)
        print(f"\ndatabase hung: the cache stayed FRESH {hung_fresh:.2f} s")
        assert hung_fresh <= FRESH_LIMIT, \
            f"the cache said FRESH {hung_fresh:.1f} s into a database hang " \
            f"(vouch {VOUCH:g} s + heartbeat + stale_after {STALE_AFTER:g} s + slack)"
        assert stayed_stale, "the cache went FRESH again while the database was still hung"
        assert unconfirmed > VOUCH, f"{CONFIRMED_AGE} said {unconfirmed} during the hang"
        writer.join(120)
        assert "during@example.com" in late, "the unsubscribe sent during the hang failed"
        acked.update(late)
        recovered = time.monotonic()
        assert wait_fresh_with(cache, acked["during@example.com"]), cache.stats()
        print(f"database answered again: FRESH with every change after "
              f"{time.monotonic() - recovered:.2f} s")

        # 2. The database crashes (SIGKILL of every process) and restarts on the same port.
        primary.kill9()
        crash_fresh = fresh_for(cache, FRESH_LIMIT + 1)
        stayed_stale = never_fresh_for(cache, HOLD)
        print(f"database down: the cache stayed FRESH {crash_fresh:.2f} s")
        assert crash_fresh <= FRESH_LIMIT, \
            f"the cache said FRESH {crash_fresh:.1f} s into a database crash"
        assert stayed_stale, "the cache went FRESH again while the database was down"
        primary.start()
        restarted = time.monotonic()
        give_up = restarted + 60
        while "after@example.com" not in acked:
            try:
                acked["after@example.com"] = unsub(stub, "after@example.com", timeout=5)
            except grpc.RpcError:
                assert time.monotonic() < give_up, store.log()
                time.sleep(0.1)
        assert wait_fresh_with(cache, acked["after@example.com"]), cache.stats()
        print(f"database restarted: FRESH with every change after "
              f"{time.monotonic() - restarted:.2f} s")

        # Nothing missed, nothing guessed: every acknowledged unsubscribe is suppressed.
        assert cache.suppressed(sorted(acked), "news") == sorted(acked)
        assert cache.stats().snapshots == 1, "the cache re-snapshotted instead of resuming"
    finally:
        cache.stop()
