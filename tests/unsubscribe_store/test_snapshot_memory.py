"""Issue 20, item 4: a snapshot Watch streams the suppression set with bounded memory on both
backends — 20 Watches that never read their stream do not load the table 20 times (the
embedded store went from 87 to 2,972 MiB) — and a consumer that stops reading is cut off
after `--watch-send-timeout`, so it cannot hold a snapshot (a database connection and a
read transaction) forever."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from testkit.procfs import peak_rss_kib, rss_kib
from testkit.store import seed_postgres, seed_sqlite

ROWS = 100_000
UNREAD = 20
# What 20 stalled snapshots may add to the server: a batch and a message each, plus gRPC
# buffers. Loading the table per Watch (100 k rows) adds about 1 GiB.
BOUND_MIB = 120


def _seed(backend: str, store_args: list[str], rows: int) -> None:
    if backend == "postgres":
        seed_postgres(Path(store_args[store_args.index("--dsn-file") + 1]).read_text(), rows)
    else:
        seed_sqlite(Path(store_args[store_args.index("--sqlite-path") + 1]), rows)


def _read_snapshot(target: str, timeout: float = 120) -> int:
    with grpc.insecure_channel(target) as channel:
        call = pb_grpc.UnsubscribeStoreStub(channel).Watch(
            pb.WatchRequest(snapshot=True), timeout=timeout)
        count = 0
        for event in call:
            if event.HasField("snapshot_chunk"):
                count += len(event.snapshot_chunk.suppressions)
            elif event.HasField("snapshot_end"):
                assert event.snapshot_end.count == count
                call.cancel()
                return count
    raise AssertionError("the stream ended without a snapshot end")


def test_unread_snapshot_watches_do_not_load_the_table_each(backend, start_store, store_args):
    _seed(backend, store_args, ROWS)
    store = start_store(store_args, extra_args=["--max-concurrent-snapshots", "32"])
    pid = store.proc.pid
    assert _read_snapshot(store.target) == ROWS  # warm: one whole snapshot, read
    baseline = rss_kib(pid)
    channels = [grpc.insecure_channel(store.target) for _ in range(UNREAD)]
    try:
        stalled = [pb_grpc.UnsubscribeStoreStub(ch).Watch(pb.WatchRequest(snapshot=True),
                                                          timeout=300)
                   for ch in channels]
        time.sleep(3)  # let every stalled stream start its snapshot and fill its window
        # the store still serves a reader and a write meanwhile
        assert _read_snapshot(store.target) == ROWS
        store.stub().Unsubscribe(pb.UnsubscribeRequest(address="during@example.com",
                                                       scope="*"), timeout=30)
        peak = peak_rss_kib(pid)
    finally:
        for call in locals().get("stalled", []):
            call.cancel()
        for ch in channels:
            ch.close()
    grown = (peak - baseline) / 1024
    print(f"{backend}: {ROWS} rows, {UNREAD} unread snapshot Watches: RSS {baseline / 1024:.0f}"
          f" MiB before, peak {peak / 1024:.0f} MiB (+{grown:.0f} MiB)")
    assert grown < BOUND_MIB, f"{UNREAD} stalled snapshots grew the store by {grown:.0f} MiB"


def test_a_consumer_that_stops_reading_is_cut_off_and_frees_its_slot(backend, start_store,
                                                                    store_args):
    _seed(backend, store_args, ROWS)  # more than gRPC's flow-control windows hold
    store = start_store(store_args, extra_args=["--max-concurrent-snapshots", "2",
                                                "--watch-send-timeout", "2"])
    channels = [grpc.insecure_channel(store.target) for _ in range(2)]
    try:
        stalled = [pb_grpc.UnsubscribeStoreStub(ch).Watch(pb.WatchRequest(snapshot=True),
                                                          timeout=60) for ch in channels]
        time.sleep(0.5)
        started = time.monotonic()
        assert _read_snapshot(store.target, timeout=60) == ROWS  # gets a slot
        waited = time.monotonic() - started
        codes = []
        for call in stalled:
            try:
                for _ in call:
                    pass
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                assert "did not read" in exc.details()
    finally:
        for ch in channels:
            ch.close()
    print(f"{backend}: a reader behind 2 stalled snapshots got its snapshot after "
          f"{waited:.1f} s")
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
