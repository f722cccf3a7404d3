#!/usr/bin/env python3
"""Unsubscribe store benchmark: prints figures, asserts nothing about speed.

1. Acknowledged unsubscribes/s and latency (p50/p99) with synchronous commit, on a single
   PostgreSQL node, on a primary + synchronous standby (durability: replicated), and on the
   embedded SQLite store — concurrent gRPC clients, unique addresses, fsync on.
2. Ack → visible in a SuppressionCache, p50/p99, across 3 caches in 3 separate processes
   (like 3 filter pods), idle and with background writers. Both clocks are CLOCK_MONOTONIC, shared by all processes here.
   A negative value means the cache applied the change before the client received its ack.
3. Primary kill: writers running, SIGKILL to the primary, promote the standby; how many
   acknowledged unsubscribes are missing on the promoted standby (target: none).
4. Fan-out (`--only fanout`): one store replica followed by `--watchers` Watch streams (one
   connection each, as filter workers hold them, spread over child processes), with the
   store holding `--fanout-sizes` suppressions already: ack -> received on *every* stream
   (p50/p99 over all streams and changes, and per change the slowest stream), and the
   store's CPU per change per watcher (its CPU while changes flow, less its CPU for the
   same time with the same streams idle).

Usage: .venv/bin/python benchmarks/unsubscribe_ack.py [--seconds 5] [--clients 1,8,32]
       [--samples 200] [--watchers 1000] [--fanout-sizes 0,1M] [--fanout-modes single,batch]
       [--only throughput|propagation|kill|fanout]
Everything runs on loopback; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import psycopg  # noqa: E402

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb  # noqa: E402
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc  # noqa: E402
from benchmarks.suppression_scale import sizes  # noqa: E402
from testkit.pg import PgCluster  # noqa: E402
from testkit.store import StoreProcess  # noqa: E402


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def hammer(target: str, seconds: float, clients: int) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    run = uuid.uuid4().hex[:8]

    def client(n: int) -> None:
        nonlocal errors
        mine: list[float] = []
        failed = 0
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.UnsubscribeStoreStub(channel)
            i = 0
            while time.monotonic() < stop_at:
                request = pb.UnsubscribeRequest(address=f"b{run}-{n}-{i}@example.com",
                                                scope="news", source="bench",
                                                idempotency_key=f"{run}-{n}-{i}")
                started = time.perf_counter()
                try:
                    stub.Unsubscribe(request, timeout=10)
                    mine.append(time.perf_counter() - started)
                except grpc.RpcError:
                    failed += 1
                i += 1
        with lock:
            latencies.extend(mine)
            errors += failed

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {"acks": len(latencies), "errors": errors, "per_second": len(latencies) / elapsed,
            "p50_ms": pct(latencies, 50) * 1000, "p99_ms": pct(latencies, 99) * 1000}


def start_store(workdir: Path, args: list[str], name: str) -> StoreProcess:
    return StoreProcess(workdir, args + ["--no-one-click"], name=name).start()


def pg_args(workdir: Path, dsn: str, durability: str, name: str) -> list[str]:
    dsn_file = workdir / f"{name}.dsn"
    dsn_file.write_text(dsn)
    return ["--store", "postgres", "--dsn-file", str(dsn_file), "--durability", durability]


def throughput(workdir: Path, seconds: float, client_counts: list[int]) -> None:
    print(f"\n== acknowledged unsubscribes (synchronous commit, fsync on, {seconds:.0f}s per run, "
          "unique addresses, each with an idempotency key)")
    print(f"   load before: {uptime()}")
    rows = []

    def runs(name: str, store: StoreProcess) -> None:
        try:
            for clients in client_counts:
                rows.append((name, clients, hammer(store.target, seconds, clients)))
        finally:
            store.close()
    with PgCluster() as single:
        runs("postgres, single node", start_store(
            workdir, pg_args(workdir, single.create_database("bench"), "local", "single"),
            "single"))
    with PgCluster(standby=True) as pair:
        runs("postgres, sync standby", start_store(
            workdir, pg_args(workdir, pair.create_database("bench"), "replicated", "pair"),
            "pair"))
    runs("sqlite (embedded)", start_store(
        workdir, ["--store", "sqlite", "--sqlite-path", str(workdir / "bench.db")], "sqlite"))
    for name, clients, r in rows:
        print(f"   {name:24s} {clients:3d} clients {r['per_second']:8.1f} acks/s   "
              f"p50 {r['p50_ms']:6.2f} ms   p99 {r['p99_ms']:7.2f} ms   "
              f"({r['acks']} acks, {r['errors']} errors)")
    print(f"   load after:  {uptime()}")


def cache_worker(target: str) -> None:
    """Child process: one SuppressionCache. Records (sequence, monotonic time) per applied
    change; on 'STOP <sequence>' from stdin waits until that sequence is applied and prints
    the records as JSON."""
    from filter_server.server.suppression_cache import SuppressionCache
    seen: list[tuple[int, float]] = []
    cache = SuppressionCache(target, on_change=lambda c: seen.append((c.sequence,
                                                                      time.monotonic())))
    cache.start()
    if not cache.wait_ready(60):
        sys.exit("cache never became ready")
    print("READY", flush=True)
    line = sys.stdin.readline().split()
    cache.wait_for_sequence(int(line[1]), 300)
    cache.stop()
    print(json.dumps(seen), flush=True)


def propagation(workdir: Path, samples: int, background: int) -> None:
    extra = f" while {background} other clients write flat out" if background else ""
    print(f"\n== ack -> visible in SuppressionCache, 3 caches in 3 processes, {samples} "
          f"unsubscribes at ~50/s{extra} (postgres with sync standby)")
    print(f"   load before: {uptime()}")
    with PgCluster(standby=True) as pair:
        store = start_store(workdir, pg_args(workdir, pair.create_database("prop"), "replicated",
                                             "prop"), "prop")
        workers = []
        hammer_thread = None
        try:
            for _ in range(3):
                workers.append(subprocess.Popen(
                    [sys.executable, __file__, "--cache-worker", store.target],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO))
            for w in workers:
                assert w.stdout.readline().strip() == "READY"
            if background:
                hammer_thread = threading.Thread(
                    target=hammer, args=(store.target, samples * 0.02 + 2, background))
                hammer_thread.start()
                time.sleep(1)
            acked: dict[int, float] = {}
            with grpc.insecure_channel(store.target) as channel:
                stub = pb_grpc.UnsubscribeStoreStub(channel)
                for i in range(samples):
                    r = stub.Unsubscribe(pb.UnsubscribeRequest(
                        address=f"prop{i}-{uuid.uuid4().hex[:6]}@example.com", scope="news",
                        source="bench"), timeout=10)
                    acked[r.sequence] = time.monotonic()
                    time.sleep(0.02)
                if hammer_thread is not None:
                    hammer_thread.join()
                head = stub.GetStatus(pb.GetStatusRequest(), timeout=10).head_sequence
            delays: list[float] = []
            per_cache = []
            for w in workers:
                out, _ = w.communicate(f"STOP {head}\n", timeout=300)
                seen = json.loads(out.strip().splitlines()[-1])
                mine = [(t - acked[seq]) * 1000 for seq, t in seen if seq in acked]
                per_cache.append(mine)
                delays.extend(mine)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
            store.close()
    print(f"   all caches: p50 {pct(delays, 50):6.2f} ms   p99 {pct(delays, 99):6.2f} ms   "
          f"max {max(delays):6.2f} ms   ({len(delays)} observations, target p99 <= 100 ms)")
    for n, mine in enumerate(per_cache):
        print(f"   cache {n}:    p50 {pct(mine, 50):6.2f} ms   p99 {pct(mine, 99):6.2f} ms")
    print(f"   load after:  {uptime()}")


def watch_worker(target: str, streams: int, batch: bool) -> None:
    """Child process: `streams` Watch streams from the current head, one connection each.
    Prints READY once every stream is open; on 'STOP <sequence>' from stdin waits until
    every stream has received that sequence and prints {sequence: [monotonic times]}."""
    import asyncio

    async def run() -> None:
        received: dict[int, list[float]] = {}
        opened = 0
        all_open = asyncio.Event()
        last = [0] * streams
        progress = asyncio.Condition()

        async def follow(n: int, head: int) -> None:
            nonlocal opened
            # A local subchannel pool: otherwise channels to one target share a connection.
            channel = grpc.aio.insecure_channel(target, options=[
                ("grpc.use_local_subchannel_pool", 1)])
            stub = pb_grpc.UnsubscribeStoreStub(channel)
            call = stub.Watch(pb.WatchRequest(from_sequence=head, heartbeat_seconds=1.0,
                                              batch_changes=batch))
            first = True
            async for event in call:
                if first:
                    first = False
                    opened += 1
                    if opened == streams:
                        all_open.set()
                kind = event.WhichOneof("event")
                if kind in ("change", "change_batch"):
                    now = time.monotonic()
                    changes = (event.change_batch.changes if kind == "change_batch"
                               else [event.change])
                    for change in changes:
                        received.setdefault(change.sequence, []).append(now)
                    last[n] = changes[-1].sequence
                    async with progress:
                        progress.notify_all()

        async with grpc.aio.insecure_channel(target) as channel:
            head = (await pb_grpc.UnsubscribeStoreStub(channel).GetStatus(
                pb.GetStatusRequest(), timeout=30)).head_sequence
        tasks = [asyncio.create_task(follow(n, head)) for n in range(streams)]
        await asyncio.wait_for(all_open.wait(), 300)  # every stream has had a heartbeat
        print("READY", flush=True)
        line = (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
        stop = int(line.split()[1])
        async with progress:
            await asyncio.wait_for(progress.wait_for(lambda: min(last) >= stop), 300)
        for task in tasks:
            task.cancel()
        print(json.dumps(received), flush=True)
    asyncio.run(run())


BURST_CLIENTS = 16


def fanout(workdir: Path, watchers: int, sizes: list[int], changes: int,
           modes: list[str], rate: float) -> None:
    from testkit.procfs import cpu_seconds
    from testkit.store import seed_postgres
    processes = max(1, min(8, watchers // 125))
    print(f"\n== fan-out: {watchers} Watch streams (one connection each, {processes} client "
          f"processes) on one store replica, {changes} unsubscribes at "
          f"{f'~{rate:g}/s' if rate else f'full speed ({BURST_CLIENTS} clients)'} (postgres, "
          "single node)")
    for size, mode in [(size, mode) for size in sizes for mode in modes]:
        print(f"   load before: {uptime()}")
        with PgCluster(fsync=False) as single:
            dsn = single.create_database("fanout")
            if size:
                started = time.monotonic()
                seed_postgres(dsn, size)
                print(f"   seeded {size:,} suppressions in {time.monotonic() - started:.0f} s")
            store = start_store(workdir, pg_args(workdir, dsn, "local", f"fanout{size}"),
                                f"fanout{size}")
            assert store.process is not None
            pid = store.process.pid
            workers = []
            try:
                per = [watchers // processes + (1 if i < watchers % processes else 0)
                       for i in range(processes)]
                opened = time.monotonic()
                for count in per:
                    workers.append(subprocess.Popen(
                        [sys.executable, __file__, "--watch-worker", store.target, str(count),
                         mode],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO))
                for w in workers:
                    assert w.stdout is not None
                    assert w.stdout.readline().strip() == "READY", "a watch worker failed"
                print(f"   {watchers} streams open after {time.monotonic() - opened:.1f} s")
                seconds = changes / rate if rate else 2.0
                time.sleep(2)
                idle_before = cpu_seconds([pid])
                time.sleep(seconds)
                idle_cpu = cpu_seconds([pid]) - idle_before
                acked: dict[int, float] = {}
                busy_before = cpu_seconds([pid])
                with grpc.insecure_channel(store.target) as channel:
                    stub = pb_grpc.UnsubscribeStoreStub(channel)
                    began = time.monotonic()

                    def write(first: int, step: int) -> None:
                        for i in range(first, changes, step):
                            r = stub.Unsubscribe(pb.UnsubscribeRequest(
                                address=f"fan{i}-{uuid.uuid4().hex[:6]}@example.com",
                                scope="news", source="bench"), timeout=60)
                            acked[r.sequence] = time.monotonic()
                            if rate:
                                time.sleep(max(0.0, began + (i + 1) / rate - time.monotonic()))
                    # A burst: many senders' clicks at once, as concurrent clients.
                    writers = [threading.Thread(target=write, args=(n, BURST_CLIENTS))
                               for n in range(BURST_CLIENTS)] if not rate else []
                    for thread in writers:
                        thread.start()
                    for thread in writers:
                        thread.join()
                    if rate:
                        write(0, 1)
                    head = max(acked)
                delays: list[float] = []
                slowest: dict[int, float] = {}
                for w in workers:
                    out, _ = w.communicate(f"STOP {head}\n", timeout=600)
                    for seq, times in json.loads(out.strip().splitlines()[-1]).items():
                        seq = int(seq)
                        if seq in acked:
                            mine = [(t - acked[seq]) * 1000 for t in times]
                            delays.extend(mine)
                            slowest[seq] = max(slowest.get(seq, float("-inf")), *mine)
                busy_cpu = cpu_seconds([pid]) - busy_before
                busy_seconds = time.monotonic() - began
            finally:
                for w in workers:
                    if w.poll() is None:
                        w.kill()
                store.close()
        expected = watchers * changes
        # The idle part scaled to the busy part's duration: heartbeats cost the same either way.
        change_cpu = busy_cpu - idle_cpu * busy_seconds / seconds
        print(f"   store of {size:,}, {mode} changes: ack -> every stream p50 {pct(delays, 50):6.2f} ms   "
              f"p99 {pct(delays, 99):6.2f} ms   max {max(delays):7.2f} ms   "
              f"({len(delays)} of {expected} deliveries; target p99 <= 100 ms)")
        print(f"   slowest stream per change: p50 {pct(list(slowest.values()), 50):6.2f} ms   "
              f"p99 {pct(list(slowest.values()), 99):6.2f} ms")
        print(f"   store CPU: {busy_cpu:.2f} s with changes over {busy_seconds:.1f} s, "
              f"{idle_cpu:.2f} s idle over {seconds:.1f} s -> "
              f"{change_cpu / expected * 1e6:.1f} µs per change per watcher")
        print(f"   load after:  {uptime()}")


def primary_kill(workdir: Path, clients: int) -> None:
    print("\n== primary kill (SIGKILL with writes in flight, then promote the standby)")
    print(f"   load before: {uptime()}")
    with PgCluster(standby=True) as pair:
        pair.create_database("kill")
        store = start_store(workdir, pg_args(workdir, pair.multi_host_dsn("kill"), "replicated",
                                             "kill"), "kill")
        acked: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()
        first_error: list[float] = []

        def writer(n: int) -> None:
            with grpc.insecure_channel(store.target) as channel:
                stub = pb_grpc.UnsubscribeStoreStub(channel)
                i = 0
                while not stop.is_set():
                    address = f"k{n}-{i}@example.com"
                    i += 1
                    try:
                        stub.Unsubscribe(pb.UnsubscribeRequest(address=address, scope="news"),
                                         timeout=5)
                    except grpc.RpcError:
                        first_error.append(time.monotonic())
                        time.sleep(0.05)
                        continue
                    with lock:
                        acked.append(address)
        threads = [threading.Thread(target=writer, args=(n,)) for n in range(clients)]
        try:
            for t in threads:
                t.start()
            time.sleep(3)
            killed = time.monotonic()
            pair.kill_primary()
            time.sleep(1)
            stop.set()
            for t in threads:
                t.join(30)
            pair.promote_standby()
            with psycopg.connect(pair.standby.dsn("kill")) as conn:
                stored = {r[0] for r in conn.execute("SELECT address FROM unsubscribe_suppressions")}
            status = _status_after(store)
        finally:
            stop.set()
            store.close()
    lost = set(acked) - stored
    print(f"   acknowledged: {len(acked)}   lost: {len(lost)}   committed but not acknowledged: "
          f"{len(stored - set(acked))}")
    if first_error:
        print(f"   clients saw errors from {min(first_error) - killed:+.3f}s after the kill on")
    print(f"   store after promotion: ready={status.ready} ({status.reason})")
    print(f"   load after:  {uptime()}")


def _status_after(store: StoreProcess):
    deadline = time.monotonic() + 30
    while True:
        s = store.stub().GetStatus(pb.GetStatusRequest(), timeout=15)
        if "synchronous_standby_names" in s.reason or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--cache-worker":
        cache_worker(sys.argv[2])
        return 0
    if len(sys.argv) == 5 and sys.argv[1] == "--watch-worker":
        watch_worker(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "batch")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--clients", default="1,8,32",
                        help="concurrent clients per throughput run, comma-separated")
    parser.add_argument("--samples", type=int, default=200, help="propagation samples")
    parser.add_argument("--background", type=int, default=8,
                        help="writers running during the second propagation run")
    parser.add_argument("--watchers", type=int, default=1000, help="Watch streams (fan-out)")
    parser.add_argument("--fanout-sizes", default="0,1M",
                        help="suppressions already in the store for each fan-out run "
                             "(comma-separated; k and M suffixes)")
    parser.add_argument("--fanout-changes", type=int, default=200,
                        help="unsubscribes per fan-out run")
    parser.add_argument("--fanout-rate", type=float, default=50.0,
                        help="unsubscribes per second in a fan-out run (0: a burst, as fast "
                             "as 16 concurrent clients get them acknowledged)")
    parser.add_argument("--fanout-modes", default="single,batch",
                        help="how streams take changes: single (one message each, as "
                             "consumers that do not ask for batches) and/or batch "
                             "(WatchRequest.batch_changes, as filter pods do)")
    parser.add_argument("--only", choices=("throughput", "propagation", "kill", "fanout"))
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores; {uptime()}")
    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "throughput"):
            throughput(workdir, args.seconds, [int(c) for c in args.clients.split(",")])
        if args.only in (None, "propagation"):
            propagation(workdir, args.samples, 0)
            propagation(workdir, args.samples, args.background)
        if args.only in (None, "kill"):
            primary_kill(workdir, 4)
        if args.only in (None, "fanout"):
            fanout(workdir, args.watchers, sizes(args.fanout_sizes), args.fanout_changes,
                   args.fanout_modes.split(","), args.fanout_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
