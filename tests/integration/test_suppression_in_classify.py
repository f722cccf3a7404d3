"""Unsubscribes reach Classify: a real unsubscribe store process (embedded SQLite) and three
real filter replicas started with `--suppression-store`, talking gRPC on loopback."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from mailwarden.filter.v1 import filter_pb2
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as upb
from testkit.filter import Server, mini_policy, wait_for, write_policy
from testkit.store import StoreProcess

MESSAGE = b"From: news@shop.example\nTo: list@shop.example\nSubject: Weekly\n\nOffers.\n"
STALE_AFTER = 1.5


@pytest.fixture
def store(tmp_path: Path):
    proc = StoreProcess(tmp_path, ["--store", "sqlite", "--sqlite-path",
                                   str(tmp_path / "store.db"), "--no-one-click"])
    yield proc.start()
    proc.close()


@pytest.fixture
def replicas(tmp_path: Path, store: StoreProcess):
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    started = [Server(tmp_path, policy_dir,
                      ["--suppression-store", store.target, "--suppression-stale-after",
                       str(STALE_AFTER), "--drain-seconds", "0"], workers=1)
               for _ in range(3)]
    try:
        for server in started:
            server.wait_serving()
        yield started
    finally:
        for server in started:
            server.kill()


def classify(server: Server, recipients: list[str], scope: str = "weekly",
             mail_class: int = filter_pb2.BULK) -> filter_pb2.ClassifyResponse:
    request = filter_pb2.ClassifyRequest(
        request_id=uuid.uuid4().hex, message=MESSAGE, list_scope=scope, mail_class=mail_class,
        envelope=filter_pb2.Envelope(mail_from="news@shop.example", recipients=recipients))
    return server.stub().Classify(request, timeout=10)


def unsubscribe(store: StoreProcess, address: str, scope: str,
                reason: int = upb.UNSUBSCRIBE) -> int:
    response = store.stub().Unsubscribe(upb.UnsubscribeRequest(
        address=address, scope=scope, reason=reason, source="test",
        idempotency_key=f"{address}/{scope}"), timeout=10)
    return response.sequence


def test_an_acknowledged_unsubscribe_reaches_every_replica(store, replicas):
    for server in replicas:
        wait_for(lambda s=server: classify(s, ["a@x.example"]).suppression_state
                 == filter_pb2.SUPPRESSION_FRESH, 30, "a fresh suppression cache")
    delays = []
    for i in range(10):
        address = f"reader{i}@x.example"
        unsubscribe(store, address, "weekly")
        acked = time.monotonic()
        pending = set(range(len(replicas)))
        while pending:
            for index in list(pending):
                if classify(replicas[index], [address, "other@x.example"]) \
                        .suppressed_recipients == [address]:
                    pending.discard(index)
            assert time.monotonic() - acked < 10, f"{address} not suppressed on {pending}"
        delays.append(time.monotonic() - acked)
    delays.sort()
    print(f"ack -> suppressed in Classify on all 3 replicas: p50 {delays[5] * 1000:.0f} ms, "
          f"max {delays[-1] * 1000:.0f} ms")
    response = classify(replicas[0], ["reader1@x.example"])
    assert response.suppression_state == filter_pb2.SUPPRESSION_FRESH
    assert response.suppression_age_seconds < STALE_AFTER


def test_transactional_mail_bypasses_list_scopes_but_not_global_or_complaints(store, replicas):
    server = replicas[0]
    unsubscribe(store, "list-only@x.example", "weekly")
    unsubscribe(store, "everything@x.example", "*")
    last = unsubscribe(store, "complained@x.example", "weekly", upb.COMPLAINT)
    everyone = ["list-only@x.example", "everything@x.example", "complained@x.example",
                "fine@x.example"]
    wait_for(lambda: len(classify(server, everyone).suppressed_recipients) == 3, 30,
             f"sequence {last} applied")
    bulk = classify(server, everyone, mail_class=filter_pb2.BULK)
    assert list(bulk.suppressed_recipients) == everyone[:3]
    transactional = classify(server, everyone, mail_class=filter_pb2.TRANSACTIONAL)
    assert list(transactional.suppressed_recipients) == ["everything@x.example",
                                                         "complained@x.example"]
    other_list = classify(server, everyone, scope="offers")
    assert list(other_list.suppressed_recipients) == ["everything@x.example"]


def test_store_outage_is_reported_stale_and_the_cache_catches_up_without_gaps(store,
                                                                               replicas):
    server = replicas[0]
    unsubscribe(store, "before@x.example", "weekly")
    wait_for(lambda: classify(server, ["before@x.example"]).suppressed_recipients, 30,
             "the first unsubscribe")
    store.kill9()
    stale = None

    def went_stale() -> bool:
        nonlocal stale
        stale = classify(server, ["before@x.example"])
        return stale.suppression_state == filter_pb2.SUPPRESSION_STALE

    outage = time.monotonic()
    wait_for(went_stale, 30, "responses marked SUPPRESSION_STALE")
    # within its bound (plus the store's heartbeat interval and polling slack)
    assert time.monotonic() - outage < STALE_AFTER + 5
    assert stale.suppression_age_seconds >= STALE_AFTER
    # what was known stays applied while stale: never "deliverable" by omission
    assert list(stale.suppressed_recipients) == ["before@x.example"]
    # the pod exports it too (gauges are refreshed every second)
    wait_for(lambda: server.metric("mailwarden_filter_suppression_cache_fresh") == 0, 10,
             "the fresh gauge to drop")
    assert server.metric("mailwarden_filter_suppression_cache_age_seconds") >= STALE_AFTER
    assert server.metric("mailwarden_filter_stale_suppression_responses_total") >= 1

    store.start()  # same database file, same port
    added = [f"during{i}@x.example" for i in range(20)]
    for address in added:
        unsubscribe(store, address, "weekly")
    for replica in replicas:
        wait_for(lambda r=replica: set(classify(r, added).suppressed_recipients) == set(added)
                 and classify(r, added).suppression_state == filter_pb2.SUPPRESSION_FRESH,
                 30, "catch-up after the outage")
    wait_for(lambda: server.metric("mailwarden_filter_suppression_cache_fresh") == 1, 10,
             "the fresh gauge to recover")
    assert server.metric("mailwarden_filter_suppression_cache_lag_sequences") == 0


def test_without_a_store_responses_say_disabled(tmp_path):
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    server = Server(tmp_path, policy_dir, [], workers=1)
    try:
        server.wait_serving()
        response = classify(server, ["a@x.example"])
        assert response.suppression_state == filter_pb2.SUPPRESSION_DISABLED
        assert list(response.suppressed_recipients) == []
    finally:
        server.kill()


def test_bad_store_address_is_a_clear_startup_error(tmp_path):
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    server = Server(tmp_path, policy_dir, ["--suppression-store", "no-port"], workers=1)
    assert server.wait_exit(30) == 2
    assert "--suppression-store must be HOST:PORT (got 'no-port')" in server.log()
