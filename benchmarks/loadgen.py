"""The load generator: closed-loop asyncio workers, one session each, in this process.

Two kinds of run:
- `accuracy_pass`: every test message exactly once, each system's own verdict recorded.
- `run_level`: C workers send messages back to back (cycling through the test split) for
  a warm-up, then a measured window. Only requests that complete inside the window count;
  server CPU (from /proc) is read at the window's edges, and this process's own CPU too,
  so the report shows how little the load generator took.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from testkit import procfs
from benchmarks.clients import Client, Verdict
from benchmarks.messages import Message


# No answer within this many seconds counts as an error (a stalled peer must not hang the
# run). Far above any latency a working system shows at the sweep's deepest level.
REQUEST_TIMEOUT = 120.0


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list; NaN when empty."""
    if not sorted_values:
        return math.nan
    # the epsilon keeps float error (99.9 / 100 * 1000 = 999.0000000000001) off the rank
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values) - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    completed: int
    errors: int
    throughput: float           # messages per second
    p50_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    server_cpu_s: float
    cpu_s_per_1000: float       # server CPU seconds per 1,000 messages
    loadgen_cpu_s_per_1000: float
    mean_hits: float = math.nan  # rules/symbols per answer, where the protocol lists them
    first_error: str = ""


@dataclass
class AccuracyResult:
    ham: int = 0
    spam: int = 0
    ham_flagged: int = 0        # false positives
    spam_flagged: int = 0       # true positives
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    verdict_labels: dict[str, int] = field(default_factory=dict)
    per_message: dict[str, str] = field(default_factory=dict)

    @property
    def false_positive_rate(self) -> float:
        return self.ham_flagged / self.ham if self.ham else math.nan

    @property
    def spam_recall(self) -> float:
        return self.spam_flagged / self.spam if self.spam else math.nan


async def _open_sessions(client: Client, n: int) -> list:
    return [await client.session() for _ in range(n)]


async def _close_sessions(sessions: Iterable) -> None:
    for s in sessions:
        await s.close()


async def accuracy_pass(client: Client, messages: list[Message], concurrency: int,
                        progress: Callable[[str], None] = print) -> AccuracyResult:
    """Classify each message once; count each system's own spam decisions."""
    result = AccuracyResult()
    todo = iter(messages)
    sessions = await _open_sessions(client, concurrency)
    done = 0
    started = time.monotonic()
    last_report = started

    async def worker(session) -> None:
        nonlocal done, last_report
        for message in todo:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    verdict: Verdict = await session.classify(message)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                result.per_message[message.name] = "error"
            else:
                result.verdict_labels[verdict.label] = \
                    result.verdict_labels.get(verdict.label, 0) + 1
                result.per_message[message.name] = "spam" if verdict.is_spam else "ham"
                if message.is_spam:
                    result.spam += 1
                    result.spam_flagged += verdict.is_spam
                else:
                    result.ham += 1
                    result.ham_flagged += verdict.is_spam
            done += 1
            now = time.monotonic()
            if now - last_report >= 10:
                last_report = now
                progress(f"  {client.name}: accuracy pass {done}/{len(messages)}")

    try:
        await asyncio.gather(*(worker(s) for s in sessions))
    finally:
        await _close_sessions(sessions)
    result.seconds = time.monotonic() - started
    return result


async def run_level(client: Client, messages: list[Message], concurrency: int, *,
                    roots: list[int], warmup: float, duration: float,
                    start_offset: int = 0) -> LevelResult:
    """C closed-loop workers; measure a `duration`-second window after `warmup` seconds."""
    counter = itertools.count(start_offset)
    n = len(messages)
    latencies: list[float] = []
    hits: list[int] = []
    errors = 0
    first_error = ""
    recording = False
    stopping = False
    sessions = await _open_sessions(client, concurrency)

    async def worker(session) -> None:
        nonlocal errors, first_error
        while not stopping:
            message = messages[next(counter) % n]
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    verdict = await session.classify(message)
            except Exception as exc:  # noqa: BLE001
                if recording:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.01)  # do not spin on a dead server
                continue
            if recording and not stopping:
                latencies.append(time.perf_counter() - t0)
                if verdict.hits >= 0:
                    hits.append(verdict.hits)

    tasks = [asyncio.create_task(worker(s)) for s in sessions]
    try:
        await asyncio.sleep(warmup)
        cpu0, own0, t0 = procfs.cpu_seconds(roots), own_cpu_seconds(), time.perf_counter()
        recording = True
        await asyncio.sleep(duration)
        stopping = True
        t1, own1, cpu1 = time.perf_counter(), own_cpu_seconds(), procfs.cpu_seconds(roots)
        await asyncio.wait(tasks, timeout=120)  # let in-flight requests finish
    finally:
        stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close_sessions(sessions)
    seconds = t1 - t0
    completed = len(latencies)
    latencies.sort()
    per_k = 1000.0 / completed if completed else math.nan
    return LevelResult(
        concurrency=concurrency, seconds=seconds, completed=completed, errors=errors,
        throughput=completed / seconds,
        p50_ms=percentile(latencies, 50) * 1e3, p99_ms=percentile(latencies, 99) * 1e3,
        p999_ms=percentile(latencies, 99.9) * 1e3,
        mean_ms=(sum(latencies) / completed * 1e3) if completed else math.nan,
        server_cpu_s=cpu1 - cpu0, cpu_s_per_1000=(cpu1 - cpu0) * per_k,
        loadgen_cpu_s_per_1000=(own1 - own0) * per_k,
        mean_hits=sum(hits) / len(hits) if hits else math.nan, first_error=first_error)
