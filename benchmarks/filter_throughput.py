#!/usr/bin/env python3
"""Classify throughput and latency over gRPC, 1 worker vs 2 workers, on the corpus test split.

    .venv/bin/python benchmarks/filter_throughput.py [--duration 15] [--concurrency 8]
                                                    [--rates 300,600] [--workers 1,2]

For each worker count it starts a real `mailwarden serve --workers K` with the example
policy and the model local mode trains (the cached one in .cache/models), then drives it
from a separate load-generator process (grpc.aio, 16 connections so SO_REUSEPORT spreads
them over the workers) in two ways:
  - saturation: a fixed number of calls in flight (closed loop) -> maximum msgs/s;
  - open loop at fixed rates -> latency at that load, measured from each call's scheduled
    send time (so a stalled server cannot hide its queueing: no coordinated omission);
  - with --streams, saturation over ClassifyStream calls as well (pipelines).
Printed: msgs/s, p50/p99/max latency, errors, the server's CPU time per message (all its
processes; 1000 / that = msgs/s one free core could serve, whatever else the machine runs),
the load generator's own CPU use, and the machine's load average before each run (other
work on the machine skews the rate and latency figures).
Figures are printed, never asserted: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONNECTIONS = 16
WARMUP_SECONDS = 2.0


# --- load generator (runs in its own process) ----------------------------------------------
def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def _generate(target: str, files: list[str], mode: str, value: float,
                    duration: float) -> dict:
    import grpc

    from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc

    requests = [filter_pb2.ClassifyRequest(request_id=str(i), message=Path(f).read_bytes())
                for i, f in enumerate(files)]
    # A local subchannel pool per channel: separate TCP connections, so the kernel can put
    # them on different workers.
    channels = [grpc.aio.insecure_channel(target, options=[
        ("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1)])
        for _ in range(CONNECTIONS)]
    stubs = [filter_pb2_grpc.FilterStub(c) for c in channels]
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = [0]

    async def call(sent_at: float, record: bool) -> None:
        k = counter[0]
        counter[0] += 1
        try:
            await stubs[k % len(stubs)].Classify(requests[k % len(requests)], timeout=30)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
        if record:
            latencies.append(loop.time() - sent_at)

    async def closed(seconds: float, record: bool) -> None:
        stop_at = loop.time() + seconds

        async def lane() -> None:
            while loop.time() < stop_at:
                await call(loop.time(), record)

        await asyncio.gather(*(lane() for _ in range(int(value))))

    async def open_(seconds: float, record: bool) -> None:
        start = loop.time()
        tasks = []
        for k in range(int(value * seconds)):
            scheduled = start + k / value
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(call(scheduled, record)))
        await asyncio.gather(*tasks)

    async def streams(seconds: float, record: bool) -> None:
        """`value` ClassifyStream calls, each sending its next message once the previous
        one is answered (closed loop per stream)."""
        stop_at = loop.time() + seconds

        async def lane(index: int) -> None:
            call = stubs[index % len(stubs)].ClassifyStream()
            k = index
            while loop.time() < stop_at:
                sent = loop.time()
                await call.write(requests[k % len(requests)])
                await call.read()
                counter[0] += 1
                k += int(value)
                if record:
                    latencies.append(loop.time() - sent)
            await call.done_writing()
            await call.wait_for_connection()
            if await call.code() != grpc.StatusCode.OK:
                errors["stream"] = errors.get("stream", 0) + 1

        await asyncio.gather(*(lane(i) for i in range(int(value))))

    run = {"closed": closed, "open": open_, "stream": streams}[mode]
    await run(WARMUP_SECONDS, False)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    await run(duration, True)
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in channels:
        await c.close()
    latencies.sort()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"calls": len(latencies), "total_calls": counter[0], "seconds": wall, "rate": len(latencies) / wall,
            "p50_ms": _percentile(latencies, 0.50) * 1e3,
            "p99_ms": _percentile(latencies, 0.99) * 1e3,
            "max_ms": latencies[-1] * 1e3 if latencies else float("nan"),
            "errors": errors, "client_cpu": cpu / wall}


def generator_main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = asyncio.run(_generate(spec["target"], spec["files"], spec["mode"],
                                   spec["value"], spec["duration"]))
    print(json.dumps(result))
    return 0


# --- orchestration ---------------------------------------------------------------------------
def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def prepare(workdir: Path, dns: str) -> tuple[Path, list[str], str]:
    from mailwarden_local.corpus import DEFAULT_CORPUS, Split
    from mailwarden_local.main import DEFAULT_POLICY
    from mailwarden_local.model import ensure_model
    from mailwarden_local.policy import local_policy
    from mailwarden_local.projection import project

    model, _ = ensure_model(DEFAULT_CORPUS, DEFAULT_CORPUS.parent,
                            lambda line: print(line, file=sys.stderr))
    policy_dir = workdir / "policy"
    # Sender authentication resolves through the benchmark's DNS sink (instant SERVFAIL,
    # as for the peers in benchmarks/run.py): nothing leaves the machine.
    project(policy_dir, {"policy.yaml": local_policy(DEFAULT_POLICY, [dns]),
                         "model.json.gz": model})
    split = Split(DEFAULT_CORPUS.parent / "split")
    files = [str(p) for p in split.files("test", "ham") + split.files("test", "spam")]
    sizes = [os.path.getsize(f) for f in files]
    described = (f"{len(files)} messages of the corpus test split "
                 f"({len(split.files('test', 'ham'))} ham, {len(split.files('test', 'spam'))} "
                 f"spam; mean {sum(sizes) / len(sizes) / 1024:.1f} KiB, "
                 f"max {max(sizes) / 1024:.0f} KiB)")
    return policy_dir, files, described


def start_server(workdir: Path, policy_dir: Path, workers: int) -> tuple[subprocess.Popen, int]:
    import urllib.request

    port_file = workdir / f"ports-{workers}.json"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailwarden.cli", "serve", "--policy-dir", str(policy_dir),
         "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--workers",
         str(workers), "--drain-seconds", "0", "--log-level", "warning",
         "--max-concurrent-rpcs", "256", "--port-file", str(port_file)],
        stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not port_file.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start (exit {proc.poll()})")
        time.sleep(0.1)
    ports = json.loads(port_file.read_text())
    while time.monotonic() < deadline:  # every worker compiled and SERVING
        url = f"http://127.0.0.1:{ports['metrics_port']}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        serving = [line for line in text.splitlines()
                   if line.startswith("mailwarden_filter_serving_workers ")]
        if serving and float(serving[0].split()[1]) == workers:
            return proc, ports["grpc_port"]
        time.sleep(0.2)
    raise SystemExit("workers did not all become SERVING")


def _process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its child processes."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _process_tree_cpu(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def run_generator(target: str, files: list[str], mode: str, value: float,
                  duration: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="mailwarden-load-") as spec:
        json.dump({"target": target, "files": files, "mode": mode, "value": value,
                   "duration": duration}, spec)
        spec.flush()
        out = subprocess.run([sys.executable, __file__, "--generate", spec.name],
                             capture_output=True, text=True, timeout=duration * 4 + 120)
    if out.returncode != 0:
        raise SystemExit("load generator failed:\n" + "\n".join(out.stderr.splitlines()[-15:]))
    return json.loads(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="calls in flight in the saturation runs")
    parser.add_argument("--rates", default="300,600",
                        help="open-loop rates, msgs/s, comma-separated")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--streams", action="store_true",
                        help="also measure saturation over ClassifyStream (pipelines)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    worker_counts = [int(w) for w in args.workers.split(",")]

    from benchmarks.dns_sink import DnsSink

    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-") as tmp, DnsSink() as dns:
        workdir = Path(tmp)
        policy_dir, files, described = prepare(workdir, dns.address)
        print(f"machine: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
        print(f"messages: {described}")
        print(f"policy: examples/spampolicy.yaml + model; load generator: separate process, "
              f"grpc.aio, {CONNECTIONS} connections; {args.duration:g}s per run after "
              f"{WARMUP_SECONDS:g}s warm-up\n")
        header = (f"{'workers':>7}  {'load':<22}{'msgs/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'max ms':>9}  {'errors':<7}{'server CPU/msg':>15}{'client CPU':>11}  "
                  f"load avg before")
        print(header)
        print("-" * len(header))
        for workers in worker_counts:
            proc, port = start_server(workdir, policy_dir, workers)
            try:
                runs = [("closed", args.concurrency, f"saturation, {args.concurrency} in flight")]
                runs += [("open", rate, f"open loop {rate:g}/s") for rate in rates]
                if args.streams:
                    runs.append(("stream", args.concurrency,
                                 f"{args.concurrency} ClassifyStreams"))
                for mode, value, label in runs:
                    load = _load_average()
                    cpu_before = _process_tree_cpu(proc.pid)
                    r = run_generator(f"127.0.0.1:{port}", files, mode, value, args.duration)
                    server_ms = (_process_tree_cpu(proc.pid) - cpu_before) * 1e3 / \
                        max(1, r["total_calls"])
                    errors = sum(r["errors"].values())
                    print(f"{workers:>7}  {label:<22}{r['rate']:>8.0f}{r['p50_ms']:>9.2f}"
                          f"{r['p99_ms']:>9.2f}{r['max_ms']:>9.1f}  {errors:<7}"
                          f"{server_ms:>12.2f} ms{r['client_cpu'] * 100:>10.0f}%  {load}",
                          flush=True)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
        print(f"\nload average after: {_load_average()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--generate":
        sys.exit(generator_main(sys.argv[2:]))
    sys.exit(main())
