"""The store's gRPC behaviour against real server processes, parametrised over the postgres
and the embedded SQLite backend (parity): idempotency under concurrent retries, replays,
complaint escalation, Check rules, separately authorised Resubscribe, import/export, Watch,
and acknowledgement only after commit (SIGKILL right after acks)."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from testkit.store import RESUBSCRIBE_TOKEN, addresses_in, count_rows

ADMIN = (("authorization", f"Bearer {RESUBSCRIBE_TOKEN}"),)


def unsub(stub, address, scope="news", reason=pb.UNSUBSCRIBE, key="", timeout=30):
    return stub.Unsubscribe(pb.UnsubscribeRequest(address=address, scope=scope, reason=reason,
                                                  source="test", idempotency_key=key),
                            timeout=timeout)


def test_concurrent_retries_of_one_request_write_once(backend, store, store_args):
    """Threads hammering the same idempotency key: one suppression, one change, and every
    caller gets the same answer (the original sequence)."""
    key = str(uuid.uuid4())

    def attempt(_):
        # Each retry on its own channel, like independent client retries.
        with grpc.insecure_channel(store.target) as channel:
            return unsub(pb_grpc.UnsubscribeStoreStub(channel), "Retry@Example.com", key=key)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(attempt, range(48)))
    assert {(a.sequence, a.already_existed, a.address) for a in answers} == \
        {(answers[0].sequence, False, "retry@example.com")}
    assert count_rows(backend, store_args, "unsubscribe_suppressions") == 1
    assert count_rows(backend, store_args, "unsubscribe_changes") == 1
    assert count_rows(backend, store_args, "unsubscribe_idempotency_keys") == 1


def test_concurrent_replays_without_key_are_noop_upserts(backend, store, store_args):
    stub = store.stub()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: unsub(stub, "same@example.com"), range(40)))
    assert len({a.sequence for a in answers}) == 1
    assert sum(not a.already_existed for a in answers) == 1   # exactly one created it
    assert count_rows(backend, store_args, "unsubscribe_changes") == 1
    again = unsub(stub, "SAME@example.com")
    assert again.already_existed and again.sequence == answers[0].sequence


def test_idempotency_key_bound_to_its_request(store):
    stub = store.stub()
    unsub(stub, "a@example.com", key="k1")
    with pytest.raises(grpc.RpcError) as info:
        unsub(stub, "b@example.com", key="k1")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_bad_input_is_invalid_argument(store):
    cases = [("not-an-address", "news", "no '@'"), ("a@example.com", "", "scope is required"),
             ("a@example.com", "bad scope", "invalid"), ("a b@example.com", "news", "local part")]
    for address, scope, fragment in cases:
        with pytest.raises(grpc.RpcError) as info:
            unsub(store.stub(), address, scope=scope)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        store.stub().Check(pb.CheckRequest(addresses=["x@example.com"] * 1001))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_complaint_escalates_and_check_applies_the_rules(backend, store, store_args):
    stub = store.stub()
    first = unsub(stub, "c@example.com", scope="news")
    escalated = unsub(stub, "c@example.com", scope="news", reason=pb.COMPLAINT)
    assert escalated.already_existed and escalated.sequence == first.sequence + 1
    assert not unsub(stub, "c@example.com", scope="news", reason=pb.BOUNCE).sequence \
        > escalated.sequence  # a weaker replay changes nothing
    unsub(stub, "l@example.com", scope="news")
    unsub(stub, "g@example.com", scope="*", reason=pb.BOUNCE)
    everyone = ["L@example.com", "g@example.com", "c@example.com", "free@example.com"]

    def check(scope, klass):
        r = stub.Check(pb.CheckRequest(addresses=everyone, scope=scope, mail_class=klass))
        return [s.address for s in r.suppressed]
    assert check("news", pb.BULK) == ["L@example.com", "g@example.com", "c@example.com"]
    assert check("news", pb.TRANSACTIONAL) == ["g@example.com", "c@example.com"]
    assert check("other", pb.BULK) == ["g@example.com"]
    assert check("", pb.BULK) == ["g@example.com"]
    detail = stub.Check(pb.CheckRequest(addresses=["c@example.com"], scope="news"))
    assert detail.suppressed[0].matched[0].reason == pb.COMPLAINT


def test_resubscribe_is_separately_authorised(backend, store, store_args):
    stub = store.stub()
    unsub(stub, "back@example.com", scope="news")
    request = pb.ResubscribeRequest(address="back@example.com", scope="news",
                                    source="preference centre, ticket 42")
    for metadata in ((), (("authorization", "Bearer wrong"),),
                     (("authorization", RESUBSCRIBE_TOKEN),)):
        with pytest.raises(grpc.RpcError) as info:
            stub.Resubscribe(request, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert addresses_in(backend, store_args) == {("back@example.com", "news")}
    auth = (("authorization", f"Bearer {RESUBSCRIBE_TOKEN}"),)
    done = stub.Resubscribe(request, metadata=auth)
    assert done.removed
    assert addresses_in(backend, store_args) == set()
    assert not stub.Resubscribe(request, metadata=auth).removed
    ops = [e.change.op for e in _changes(stub, 0, done.sequence)]
    assert ops[-1] == pb.RESUBSCRIBE


def _changes(stub, after: int, until: int) -> list[pb.WatchEvent]:
    """Changes (after, until] from a Watch stream."""
    out = []
    call = stub.Watch(pb.WatchRequest(from_sequence=after), timeout=30)
    for event in call:
        if event.HasField("change"):
            out.append(event)
            if event.change.sequence >= until:
                call.cancel()
                break
    return out


def test_watch_snapshot_then_ordered_changes(store):
    stub = store.stub()
    for i in range(5):
        unsub(stub, f"w{i}@example.com")
    call = stub.Watch(pb.WatchRequest(snapshot=True, heartbeat_seconds=0.2), timeout=30)
    events = iter(call)
    snapshot = set()
    for event in events:
        if event.HasField("snapshot_chunk"):
            snapshot |= {s.address for s in event.snapshot_chunk.suppressions}
        elif event.HasField("snapshot_end"):
            assert event.snapshot_end.sequence == 5 and event.snapshot_end.count == 5
            break
    assert snapshot == {f"w{i}@example.com" for i in range(5)}
    threading.Timer(0.3, lambda: [unsub(stub, f"x{i}@example.com") for i in range(3)]).start()
    seen = []
    for event in events:
        if event.HasField("change"):
            seen.append(event.change.sequence)
            if len(seen) == 3:
                break
    call.cancel()
    assert seen == [6, 7, 8]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Watch(pb.WatchRequest(from_sequence=1000), timeout=10))
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_watch_batches_pending_changes_only_for_consumers_that_ask(store):
    """A stream behind the head gets what is pending in one ChangeBatch when it asked for
    batches (filter pods do: one write per wake instead of one per change, which is what
    keeps a burst of unsubscribes fast with many streams); a consumer that did not ask gets
    the same changes one message each, as before. Both in order, gapless, complete."""
    stub = store.stub()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: unsub(stub, f"b{i}@example.com"), range(40)))

    def received(batch: bool) -> tuple[list[int], list[str]]:
        call = stub.Watch(pb.WatchRequest(from_sequence=0, heartbeat_seconds=0.5,
                                          batch_changes=batch), timeout=30)
        sequences: list[int] = []
        kinds: list[str] = []
        for event in call:
            kind = event.WhichOneof("event")
            kinds.append(kind)
            if kind == "change_batch":
                sequences.extend(c.sequence for c in event.change_batch.changes)
            elif kind == "change":
                sequences.append(event.change.sequence)
            if len(sequences) >= 40 or kind == "heartbeat":
                break
        call.cancel()
        return sequences, kinds
    sequences, kinds = received(batch=True)
    assert sequences == list(range(1, 41))
    assert kinds.count("change_batch") < 5 and "change" not in kinds, kinds
    sequences, kinds = received(batch=False)
    assert sequences == list(range(1, 41))
    assert kinds == ["change"] * 40


def test_import_export_round_trip(backend, store, store_args):
    stub = store.stub()
    csv_data = (b"address,scope,reason,source,first_seen\n"
                + b"".join(f"user{i}@Example.com,news,,old-esp,2020-05-01T00:00:00+00:00\n"
                           .encode() for i in range(1200))
                + b"complainer@example.com,,complaint,fbl,\n")
    chunks = [pb.ImportChunk(format=pb.CSV, default_scope="*", data=csv_data[:1000])] + \
        [pb.ImportChunk(data=csv_data[i:i + 777]) for i in range(1000, len(csv_data), 777)]
    summary = stub.Import(iter(chunks), timeout=120, metadata=ADMIN)
    assert (summary.rows, summary.inserted, summary.already_existed) == (1201, 1201, 0)
    again = stub.Import(iter(chunks), timeout=120, metadata=ADMIN)          # re-running is harmless
    assert (again.inserted, again.already_existed) == (0, 1201)
    assert count_rows(backend, store_args, "unsubscribe_changes") == 1201

    exported = b"".join(c.data for c in stub.Export(pb.ExportRequest(format=pb.JSONL),
                                                    metadata=ADMIN))
    lines = exported.decode().splitlines()
    assert len(lines) == 1201
    assert '"first_seen": "2020-05-01T00:00:00+00:00"' in lines[-1] or \
        any("2020-05-01" in line for line in lines)
    news_csv = b"".join(c.data for c in stub.Export(pb.ExportRequest(format=pb.CSV, scope="news"),
                                                      metadata=ADMIN))
    assert len(news_csv.decode().splitlines()) == 1 + 1200
    glob = b"".join(c.data for c in stub.Export(pb.ExportRequest(format=pb.CSV, scope="*"),
                                                  metadata=ADMIN))
    assert glob.decode().splitlines()[1].startswith("complainer@example.com,*,complaint,fbl,")

    bad = pb.ImportChunk(format=pb.JSONL, data=b'{"address": "ok@example.com"}\n{"address": 5}\n')
    with pytest.raises(grpc.RpcError) as info:
        stub.Import(iter([bad]), metadata=ADMIN)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 2" in info.value.details()
    skip = pb.ImportChunk(format=pb.JSONL, skip_invalid=True, data=bad.data)
    summary = stub.Import(iter([skip]), metadata=ADMIN)
    assert summary.invalid_rows == 1 and summary.errors[0].line == 2


def test_import_escalates_and_its_changes_rebuild_the_state(backend, store):
    """An import (one set-based upsert on PostgreSQL) escalates an existing suppression to
    a complaint, keeps the complaint of a key given twice, and logs gapless changes from
    which a follower (a filter's cache) reaches exactly the stored state."""
    stub = store.stub()
    start = unsub(stub, "old@example.com").sequence
    data = (b"address,scope,reason\n"
            b"old@example.com,news,complaint\n"       # escalation of a stored row
            b"twice@example.com,news,unsubscribe\n"
            b"twice@example.com,news,complaint\n"     # the same key again, stricter
            b"new@example.com,news,bounce\n"
            b"old@example.com,news,unsubscribe\n")    # a replay: nothing to write
    summary = stub.Import(iter([pb.ImportChunk(format=pb.CSV, data=data)]), timeout=60,
                          metadata=ADMIN)
    assert summary.rows == 5 and summary.last_sequence > start
    again = stub.Import(iter([pb.ImportChunk(format=pb.CSV, data=data)]), timeout=60,
                        metadata=ADMIN)
    assert again.inserted == 0 and again.last_sequence == summary.last_sequence
    state: dict[str, int] = {}
    sequences = []
    for event in stub.Watch(pb.WatchRequest(from_sequence=start), timeout=30):
        if event.HasField("change"):
            sequences.append(event.change.sequence)
            state[event.change.address] = event.change.reason
        if sequences and sequences[-1] == summary.last_sequence:
            break
    assert sequences == list(range(start + 1, summary.last_sequence + 1))
    assert state == {"old@example.com": pb.COMPLAINT, "twice@example.com": pb.COMPLAINT,
                     "new@example.com": pb.BOUNCE}
    checked = stub.Check(pb.CheckRequest(addresses=["old@example.com", "twice@example.com",
                                                    "new@example.com"], scope="news",
                                         mail_class=pb.TRANSACTIONAL), timeout=10)
    assert [r.address for r in checked.suppressed] == ["old@example.com", "twice@example.com"]


def test_ack_means_committed_even_if_killed_right_after(backend, start_store, store_args):
    """Writers record every acknowledged address; the server is SIGKILLed while they run.
    Every acknowledged suppression must be in the database afterwards."""
    server = start_store(store_args)
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.UnsubscribeStoreStub(channel)
            i = 0
            while not stop.is_set():
                address = f"w{n}-{i}@example.com"
                try:
                    unsub(stub, address, timeout=10)
                except grpc.RpcError:
                    return  # the server is gone: this one was not acknowledged
                with lock:
                    acked.append(address)
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.005)
    server.kill9()                      # right after acks, with more in flight
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 60
    stored = {address for address, _ in addresses_in(backend, store_args)}
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged unsubscribes lost: {sorted(missing)[:5]}"
    # And the restarted store serves them.
    server.start()
    r = server.stub().Check(pb.CheckRequest(addresses=acked[-3:], scope="news"))
    assert len(r.suppressed) == 3


def test_status_reports_backend_facts(backend, store):
    status = store.stub().GetStatus(pb.GetStatusRequest())
    assert status.ready and status.backend == backend
    assert status.highly_available == (backend == "postgres")
