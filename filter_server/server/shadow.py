"""Shadow evaluation: a candidate policy judges a sample of live traffic next to the live
policy, without ever answering (`mailwarden serve --shadow-policy-dir DIR`).

The request path only *offers* a classified message (a coin toss and a non-blocking put);
one background thread per worker classifies the sample with the candidate and counts how
the verdicts compare: by live and shadow action (so by direction: stricter, laxer, same)
and, for every verdict that changed, by each rule that fired on one side only. Its CPU is
bounded by a token bucket of CPU seconds (`--shadow-cpu-fraction` of one core on average,
at most BURST_SECONDS of it at once), its memory by the bytes it may hold queued; a sample
that does not fit is skipped and counted, never waited for.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from filter_server.auth.gather import Evidence
from filter_server.engine.compiled import ACTIONS, CompiledPolicy, Envelope, Verdict
from filter_server.server.policy import PolicyLoadError, _generation, load_and_compile

RANK = {action: index for index, action in enumerate(ACTIONS)}
DEFAULT_SAMPLE_RATE = 0.1
DEFAULT_CPU_FRACTION = 0.1
DEFAULT_QUEUE_BYTES = 8 * 1024 * 1024
# The bucket holds this many seconds' worth of the CPU fraction: a burst of samples after
# a quiet spell is evaluated, a sustained stream is thinned to the fraction.
BURST_SECONDS = 10.0

SHADOW_VERDICTS_TOTAL = "mailwarden_shadow_verdicts_total"
SHADOW_RULE_CHANGES_TOTAL = "mailwarden_shadow_rule_changes_total"
SHADOW_SKIPPED_TOTAL = "mailwarden_shadow_skipped_total"
SHADOW_CPU_SECONDS_TOTAL = "mailwarden_shadow_cpu_seconds_total"
SHADOW_POLICY_INFO = "mailwarden_shadow_policy_info"


def direction(live: str, shadow: str) -> str:
    """`stricter` (the candidate acts more severely), `laxer`, or `same`."""
    if RANK[shadow] > RANK[live]:
        return "stricter"
    if RANK[shadow] < RANK[live]:
        return "laxer"
    return "same"


class ShadowMetrics:
    """Registered only when a worker runs a shadow policy."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.verdicts = Counter(
            SHADOW_VERDICTS_TOTAL, "Sampled messages judged by the live and the shadow "
            "(candidate) policy, by each one's action and the direction of the change",
            ["live_action", "shadow_action", "direction"], registry=registry)
        self.rule_changes = Counter(
            SHADOW_RULE_CHANGES_TOTAL, "Rules that fired under one policy only, counted on "
            "sampled messages whose action changed: `added` fired only in the shadow, "
            "`removed` only in the live policy", ["rule", "change", "direction"],
            registry=registry)
        self.skipped = Counter(
            SHADOW_SKIPPED_TOTAL, "Sampled messages not evaluated in shadow: `cpu` (the CPU "
            "budget was spent), `queue` (the queue's bytes were full), `no-policy` (none "
            "loaded yet)", ["reason"], registry=registry)
        self.cpu_seconds = Counter(
            SHADOW_CPU_SECONDS_TOTAL, "CPU time spent classifying with the shadow policy",
            registry=registry)
        self.policy_info = Gauge(
            SHADOW_POLICY_INFO, "The shadow policy loaded (value 1, its hash as a label)",
            ["hash"], registry=registry, multiprocess_mode="max")


@dataclass(frozen=True)
class _Sample:
    raw: bytes
    envelope: Envelope
    evidence: Evidence | None
    live: Verdict


class CpuBucket:
    """A token bucket of CPU seconds, refilled at `fraction` per wall-clock second."""

    def __init__(self, fraction: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.fraction = fraction
        self.capacity = fraction * BURST_SECONDS
        self._tokens = self.capacity
        self._clock = clock
        self._at = clock()
        self._lock = threading.Lock()

    def available(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.fraction)
            self._at = now
            return self._tokens > 0

    def spend(self, seconds: float) -> None:
        with self._lock:
            self._tokens -= seconds


class ShadowEvaluator:
    def __init__(self, directory: Path, metrics: ShadowMetrics, log: logging.Logger, *,
                 sample_rate: float = DEFAULT_SAMPLE_RATE,
                 cpu_fraction: float = DEFAULT_CPU_FRACTION,
                 queue_bytes: int = DEFAULT_QUEUE_BYTES,
                 chance: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.current: CompiledPolicy | None = None
        self.sample_rate = sample_rate
        self.metrics = metrics
        self._log = log
        self._chance = chance
        self._bucket = CpuBucket(cpu_fraction, clock)
        self._queue: queue.SimpleQueue[_Sample | None] = queue.SimpleQueue()
        self._queue_bytes = queue_bytes
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._seen_generation: str | None = None
        self._thread: threading.Thread | None = None

    # -- the request path ----------------------------------------------------------------
    def offer(self, raw: bytes, envelope: Envelope, evidence: Evidence | None,
              live: Verdict) -> None:
        """Maybe queue a classified message for the shadow policy; never blocks."""
        if self.sample_rate <= 0 or self._chance() >= self.sample_rate:
            return
        if self.current is None:
            self.metrics.skipped.labels("no-policy").inc()
            return
        if not self._bucket.available():
            self.metrics.skipped.labels("cpu").inc()
            return
        with self._queued_lock:
            if self._queued + len(raw) > self._queue_bytes:
                self.metrics.skipped.labels("queue").inc()
                return
            self._queued += len(raw)
        self._queue.put(_Sample(raw, envelope, evidence, live))

    # -- the shadow thread ---------------------------------------------------------------
    def evaluate(self, raw: bytes, envelope: Envelope, evidence: Evidence | None,
                 live: Verdict) -> Verdict | None:
        """Classify with the shadow policy and count the comparison (the thread's step;
        also called directly by tests and the benchmark)."""
        policy = self.current
        if policy is None:
            return None
        started = time.thread_time()
        shadow = policy.classify(raw, envelope, evidence=evidence)
        spent = time.thread_time() - started
        self._bucket.spend(spent)
        self.metrics.cpu_seconds.inc(spent)
        change = direction(live.action, shadow.action)
        self.metrics.verdicts.labels(live.action, shadow.action, change).inc()
        if change != "same":
            for rule in shadow.fired - live.fired:
                self.metrics.rule_changes.labels(rule, "added", change).inc()
            for rule in live.fired - shadow.fired:
                self.metrics.rule_changes.labels(rule, "removed", change).inc()
        return shadow

    def start(self, stop: threading.Event, poll_seconds: float) -> None:
        self.reload_if_changed()
        self._thread = threading.Thread(target=self._run, args=(stop, poll_seconds),
                                        name="shadow", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, stop: threading.Event, poll_seconds: float) -> None:
        next_poll = time.monotonic() + poll_seconds
        while not stop.is_set():
            try:
                sample = self._queue.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                sample = None
            else:
                if sample is None:
                    return
                with self._queued_lock:
                    self._queued -= len(sample.raw)
                try:
                    self.evaluate(sample.raw, sample.envelope, sample.evidence, sample.live)
                except Exception:  # a shadow failure must never touch live traffic
                    self._log.exception("shadow evaluation failed")
            if time.monotonic() >= next_poll:
                self.reload_if_changed()
                next_poll = time.monotonic() + poll_seconds

    def reload_if_changed(self) -> bool:
        generation = _generation(self.directory)
        if generation == self._seen_generation:
            return False
        self._seen_generation = generation
        try:
            policy = load_and_compile(self.directory)
        except PolicyLoadError as exc:
            self._log.warning("shadow policy not loaded", extra={
                "policy_dir": str(self.directory), "errors": exc.problems})
            return False
        old = self.current
        self.current = policy
        if old is not None and old.hash != policy.hash:
            self.metrics.policy_info.labels(old.hash).set(0)
        self.metrics.policy_info.labels(policy.hash).set(1)
        self._log.info("shadow policy loaded", extra={"policy_hash": policy.hash})
        return True
