"""Suppression answered from an UnsubscribeStore: the worker keeps a SuppressionCache (the
store's Watch stream, snapshot + resume) and every Classify reads it.

A cache that has not loaded, or has not confirmed it is up to date within
`--suppression-stale-after`, still answers with what it holds, but marks the response
SUPPRESSION_STALE with the data's age: the sender must not read "nobody suppressed" as
"everybody may be mailed" then (docs/server.md says what to do in each state).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import grpc

from filter_server.server.metrics import FilterMetrics
from filter_server.server.suppression import SuppressionAnswer
from filter_server.server.suppression_cache import SuppressionCache
from mailwarden.filter.v1 import filter_pb2
from mailwarden.tls import channel_credentials

# A proto double can carry +Inf, but callers print and compare ages: "never" is a large,
# finite number of seconds instead.
NEVER_FRESH_AGE_SECONDS = 1e9


def tls_channel_factory(directory: Path) -> Callable[[str, list[tuple[str, object]]],
                                                      grpc.Channel]:
    """Channels to a TLS store (`--suppression-store-tls-dir`): ca.crt verifies the store,
    tls.crt + tls.key (when present) are the client certificate for a store that requires
    one. The files are read on every connection attempt, so a renewed client certificate
    is used from the next reconnect on, and files not mounted yet are retried (the cache
    logs why) rather than stopping the worker."""
    def factory(target: str, options: list[tuple[str, object]]) -> grpc.Channel:
        return grpc.secure_channel(target, channel_credentials(directory), options=options)
    return factory


class StoreSuppression:
    def __init__(self, cache: SuppressionCache, metrics: FilterMetrics, *,
                 on_held: Callable[[int, int], None] | None = None) -> None:
        self.cache = cache
        self.metrics = metrics
        # Told the bytes the cache holds — (private, shared with the pod's other workers),
        # a snapshot being received included — whenever that changes, checked every
        # export: the worker's memory budget leaves room for them (server/memory.py).
        self.on_held = on_held
        self._held: tuple[int, int] = (-1, -1)
        self._stop = threading.Event()
        if cache.on_change is None:
            cache.on_change = self._changed

    def check(self, recipients: Sequence[str], mail_class: int,
              list_scope: str) -> SuppressionAnswer:
        checked = self.cache.check(recipients, list_scope, mail_class) if recipients else None
        suppressed = tuple(checked.suppressed) if checked else ()
        unparseable = tuple(checked.unparseable) if checked else ()
        stats = self.cache.stats()
        age = stats.age_seconds if math.isfinite(stats.age_seconds) else NEVER_FRESH_AGE_SECONDS
        if stats.fresh(self.cache.stale_after):
            return SuppressionAnswer(suppressed, filter_pb2.SUPPRESSION_FRESH, round(age, 3),
                                     unparseable)
        self.metrics.stale_suppression_answers.inc()
        return SuppressionAnswer(suppressed, filter_pb2.SUPPRESSION_STALE, round(age, 3),
                                 unparseable)

    def _changed(self, change: "object") -> None:
        """Observe commit -> applied here: the ack -> suppressed-in-Classify SLI. Wall clocks
        of the store's database and this pod are compared (NTP keeps them within
        milliseconds); a clock behind the database counts as zero."""
        at = change.at  # type: ignore[attr-defined]
        if at.seconds or at.nanos:
            delay = time.time() - (at.seconds + at.nanos / 1e9)
            self.metrics.suppression_propagation.observe(max(0.0, delay))

    # --- lifecycle and metrics ------------------------------------------------------------
    def start(self, export_every: float = 1.0) -> None:
        self.cache.start()
        threading.Thread(target=self._export, args=(export_every,), name="suppression-metrics",
                         daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.cache.stop()

    def _export(self, every: float) -> None:
        # Worker metrics are files the supervisor sums (multiprocess mode); a collector
        # object in the worker would never be scraped, so the cache state is copied into
        # gauges periodically.
        while not self._stop.is_set():
            stats = self.cache.stats()
            self.metrics.suppression_cache_updated(stats, self.cache.stale_after)
            held = self.cache.held_bytes()
            if self.on_held is not None and held != self._held:
                self._held = held
                self.on_held(*held)
            self._stop.wait(every)
