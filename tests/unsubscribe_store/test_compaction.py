"""Storage stays bounded (issue 15): a real store on each backend compacts its change log
and prunes idempotency keys on a timer, keeping the newest changes; a Watch that resumes
from a sequence no longer in the log is told to take a snapshot (OUT_OF_RANGE, which the
filter pods' cache answers with a new snapshot), one inside the log still resumes, a
snapshot is whole, and a retry whose idempotency key was pruned changes nothing."""

from __future__ import annotations

import time

import grpc
import pytest

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from testkit.store import count_rows


def unsubscribe(stub, address: str, key: str) -> pb.UnsubscribeResponse:
    return stub.Unsubscribe(pb.UnsubscribeRequest(
        address=address, scope="weekly", reason=pb.UNSUBSCRIBE, source="test",
        idempotency_key=key), timeout=10)


def watch(stub, **request) -> list[pb.WatchEvent]:
    """The events of a Watch up to its first heartbeat."""
    events = []
    call = stub.Watch(pb.WatchRequest(heartbeat_seconds=0.5, **request), timeout=20)
    for event in call:
        if event.WhichOneof("event") == "heartbeat":
            call.cancel()
            break
        events.append(event)
    return events


def test_the_log_and_the_keys_are_compacted_and_old_cursors_resnapshot(
        backend, start_store, store_args) -> None:
    store = start_store(store_args, extra_args=[
        "--compact-every", "0.5", "--retain-changes", "2", "--retain-changes-days", "0",
        "--retain-idempotency-days", "0"])
    stub = store.stub()
    first = [unsubscribe(stub, f"r{i}@example.com", f"key-{i}") for i in range(5)]
    head = first[-1].sequence
    deadline = time.monotonic() + 30
    while (count_rows(backend, store_args, "unsubscribe_changes") > 2 or
           count_rows(backend, store_args, "unsubscribe_idempotency_keys") > 0):
        assert time.monotonic() < deadline, "compaction did not run"
        time.sleep(0.2)
    # The newest two changes are kept whatever their age.
    assert count_rows(backend, store_args, "unsubscribe_changes") == 2

    with pytest.raises(grpc.RpcError) as gone:
        watch(stub, from_sequence=head - 3)
    assert gone.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "compacted" in gone.value.details()
    resumed = watch(stub, from_sequence=head - 2)
    assert [e.change.sequence for e in resumed] == [head - 1, head]
    snapshot = watch(stub, snapshot=True)
    assert sum(len(e.snapshot_chunk.suppressions) for e in snapshot
               if e.WhichOneof("event") == "snapshot_chunk") == 5
    assert snapshot[-1].snapshot_end.sequence == head

    # A retry after its key was pruned is still a harmless upsert: same sequence, no new
    # change, nothing duplicated.
    again = unsubscribe(stub, "r0@example.com", "key-0")
    assert again.sequence == first[0].sequence and again.already_existed
    assert watch(stub, from_sequence=head - 2)[-1].change.sequence == head


def test_the_fingerprint_snapshot_is_rebuilt_when_its_changes_were_compacted(
        tmp_path, backend, start_store, store_args) -> None:
    """The store's fingerprint snapshot is merged with the log since its sequence; once
    compaction removed every change after it, it must be rebuilt, not served stale."""
    from filter_server.server.suppression_artifact import fetch_fingerprint_snapshot
    from mailwarden.fingerprint_index import SortedFingerprints
    from mailwarden.fingerprints import FingerprintKey
    key_file = tmp_path / "fingerprint-key"
    key_file.write_text("6e" * 32)
    key = FingerprintKey(bytes.fromhex("6e" * 32))
    store = start_store(store_args, extra_args=[
        "--fingerprint-key-file", str(key_file), "--fingerprint-refresh-changes", "1",
        "--compact-every", "0.5", "--retain-changes", "0", "--retain-changes-days", "0"])
    stub = store.stub()

    def fetched() -> SortedFingerprints:
        with grpc.insecure_channel(store.target) as channel:
            fetch_fingerprint_snapshot(channel, key, tmp_path / "pod.idx")
        return SortedFingerprints.open(tmp_path / "pod.idx", key)

    unsubscribe(stub, "first@example.com", "k0")
    assert len(fetched()) == 1
    head = [unsubscribe(stub, f"r{i}@example.com", f"k{i}") for i in range(1, 4)][-1].sequence
    deadline = time.monotonic() + 30
    while count_rows(backend, store_args, "unsubscribe_changes"):
        assert time.monotonic() < deadline, "compaction did not run"
        time.sleep(0.2)
    index = fetched()
    assert (index.sequence, len(index)) == (head, 4)
    assert index.lookup(key.fingerprint("r3@example.com", "weekly")) is False
