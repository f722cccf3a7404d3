"""Issue 20, item 14: 300 Watch streams asking for the minimum heartbeat raised Unsubscribe
p50 from 1.5 ms to ~100 ms, because every heartbeat of every stream queried the database
(the change log, then the head). Heartbeats must cost no database work, and a change must
reach every watcher without one query per watcher.

Observed from outside the process: PostgreSQL's own count of committed transactions in the
store's database (every read is an autocommit transaction), and what the watchers
receive. The latency figures themselves are printed by benchmarks/store_abuse.py."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import psycopg

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc

WATCHERS = 300
CHANNELS = 10


class Watchers:
    """WATCHERS Watch streams over CHANNELS connections, on an asyncio loop in a thread,
    counting heartbeats and changes per stream."""

    def __init__(self, target: str, heartbeat_seconds: float) -> None:
        self.target = target
        self.heartbeat_seconds = heartbeat_seconds
        self.heartbeats = [0] * WATCHERS
        self.changes: list[list[int]] = [[] for _ in range(WATCHERS)]
        self.errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), daemon=True)

    async def _one(self, stub, index: int) -> None:
        call = stub.Watch(pb.WatchRequest(from_sequence=0,
                                          heartbeat_seconds=self.heartbeat_seconds))
        try:
            async for event in call:
                if event.HasField("heartbeat"):
                    self.heartbeats[index] += 1
                elif event.HasField("change"):
                    self.changes[index].append(event.change.sequence)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.errors.append(f"{exc.code().name}: {exc.details()}")

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        channels = [grpc.aio.insecure_channel(self.target) for _ in range(CHANNELS)]
        stubs = [pb_grpc.UnsubscribeStoreStub(ch) for ch in channels]
        tasks = [asyncio.create_task(self._one(stubs[i % CHANNELS], i))
                 for i in range(WATCHERS)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()

    def __enter__(self) -> Watchers:
        self._thread.start()
        deadline = time.monotonic() + 60
        while min(self.heartbeats) == 0:
            assert time.monotonic() < deadline, f"watchers did not start: {self.errors[:3]}"
            time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _transactions(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                "WHERE datname = current_database()").fetchone()[0])


def _counted(dsn: str, seconds: float) -> float:
    """Transactions per second the store ran in its database over `seconds`. A busy backend
    reports its statistics to pg_stat_database about once a second, but one that went idle
    (the pooled connections after the 300 streams' start-up reads) may hold them for up to
    PGSTAT_IDLE_INTERVAL (10 s): wait that out first, or a loaded machine counts the
    start-up burst as steady-state work (seen: 15 to 64 transactions/s for one build)."""
    time.sleep(11)
    before = _transactions(dsn)
    time.sleep(seconds)
    time.sleep(1.5)
    return (_transactions(dsn) - before - 1) / (seconds + 1.5)


def test_idle_watchers_cost_no_database_work(start_store, pg_dsn, tmp_path: Path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(pg_dsn)
    store = start_store(["--store", "postgres", "--dsn-file", str(dsn_file)])
    idle = _counted(pg_dsn, 3)
    with Watchers(store.target, heartbeat_seconds=0.1) as watchers:
        start = list(watchers.heartbeats)
        rate = _counted(pg_dsn, 3)
        got = [now - then for now, then in zip(watchers.heartbeats, start)]
        # one change reaches all 300 watchers
        sequence = store.stub().Unsubscribe(pb.UnsubscribeRequest(
            address="fanout@example.com", scope="*"), timeout=30).sequence
        deadline = time.monotonic() + 15
        while sum(sequence in c for c in watchers.changes) < WATCHERS:
            assert time.monotonic() < deadline, \
                f"{sum(sequence in c for c in watchers.changes)} of {WATCHERS} got the change"
            time.sleep(0.1)
    assert not watchers.errors, watchers.errors[:3]
    print(f"{WATCHERS} watchers at a 0.1 s heartbeat: {rate:.0f} database transactions/s "
          f"(no watchers: {idle:.0f}/s); heartbeats per stream counted: {min(got)}-{max(got)}")
    assert min(got) >= 4, "heartbeats stopped"  # every stream still hears the store
    assert rate < idle + 20, f"{rate:.0f} transactions/s for idle watchers"
