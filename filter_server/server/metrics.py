"""Prometheus metrics of the filter server and the HTTP endpoint that exposes them.

With several worker processes, prometheus-client's multiprocess mode is used: each worker
writes its values to memory-mapped files in a shared directory (PROMETHEUS_MULTIPROC_DIR,
set by the supervisor before a worker imports prometheus_client) and the supervisor's
/metrics endpoint sums them, so one scrape shows the whole pod. Gauges say how they
combine across workers (`multiprocess_mode`); in single-process mode that is ignored.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from typing import Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mailwarden import wire

# `_created` series double the output and no dashboard uses them.
disable_created_metrics()

# Server-side time to classify one message; the engine takes ~0.5 ms on typical mail,
# so the buckets are fine-grained below 10 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0)
# gRPC methods, then the mail-server protocols (filter_server/protocols), whose calls are
# counted under the protocol's name in the same `method` label.
METHODS = ("Classify", "ClassifyStream", "milter", "spamd", "rspamd")
# One DNS query: ~1 ms on loopback, a few ms to cluster DNS, up to the lookup timeout.
DNS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DNS_OUTCOMES = ("cached", "ok", "nxdomain", "nodata", "timeout", "servfail", "refused",
                "unreachable", "resolver-down", "malformed-response", "error")
AUTH_METHODS = ("spf", "dkim", "dmarc")
# Commit at the unsubscribe store -> applied by a filter worker (visible in Classify). Normally
# well under a second; the long tail covers catch-up after an outage up to the compliance
# windows the alert rules use (1 h, 1 d, 2 d, 10 d): a rule can only test a bucket bound.
PROPAGATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                       3600.0, 21600.0, 86400.0, 172800.0, 864000.0)


class FilterMetrics:
    """The metrics one worker process updates."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            wire.FILTER_REQUESTS_TOTAL, "Filter RPCs finished, by method and gRPC status "
            "code (RPCs the gRPC core rejects before they reach the service, such as "
            "oversized messages, are not counted)", ["method", "code"], registry=registry)
        self.duration = Histogram(
            "mailwarden_filter_classify_duration_seconds", "Server time to classify one "
            "message (for ClassifyStream: per message)", ["method"],
            buckets=LATENCY_BUCKETS, registry=registry)
        self.verdicts = Counter(
            "mailwarden_filter_verdicts_total", "Messages classified, by action", ["action"],
            registry=registry)
        self.in_flight = Gauge(
            "mailwarden_filter_in_flight_requests", "Filter RPCs being served right now",
            multiprocess_mode="livesum", registry=registry)
        self.serving = Gauge(
            "mailwarden_filter_serving_workers", "Worker processes whose health is SERVING "
            "(policy compiled, not shutting down)", multiprocess_mode="livesum",
            registry=registry)
        self.rejected = Counter(
            "mailwarden_filter_capacity_rejections_total", "Filter RPCs refused with "
            "RESOURCE_EXHAUSTED because the worker was at capacity: --max-concurrent-rpcs "
            "in flight, more queued work than half the call's deadline, or its memory "
            "budget for messages taken", registry=registry)
        self.memory_budget = Gauge(
            "mailwarden_filter_memory_budget_bytes", "Bytes of messages in flight the "
            "workers may hold at once (derived from the container's memory limit)",
            multiprocess_mode="livesum", registry=registry)
        self.memory_reserved = Gauge(
            "mailwarden_filter_memory_reserved_bytes", "Bytes of that budget reserved by "
            "calls in flight (a call reserves room to receive the largest message, then "
            "keeps what its message needs)", multiprocess_mode="livesum", registry=registry)
        self.policy_info = Gauge(
            wire.FILTER_POLICY_INFO, "The policy being served: value 1 for the live "
            "content hash (0 for hashes served before)", ["hash"],
            multiprocess_mode="livemax", registry=registry)
        self.policy_loaded = Gauge(
            "mailwarden_filter_policy_loaded_timestamp_seconds", "Unix time the live policy "
            "was loaded and compiled", multiprocess_mode="livemax", registry=registry)
        self.policy_rules = Gauge(
            "mailwarden_filter_policy_rules", "Pattern and meta rules in the live policy",
            multiprocess_mode="livemax", registry=registry)
        self.policy_reloads = Counter(
            "mailwarden_filter_policy_reloads_total", "Policy changes loaded and swapped in "
            "(after the first load)", registry=registry)
        self.policy_reload_failures = Counter(
            "mailwarden_filter_policy_reload_failures_total", "New policy versions that failed to "
            "load or compile (the previous policy kept serving)", registry=registry)
        # Suppression cache (only with --suppression-store). Across workers the worst one
        # counts: the oldest data, the longest lag, any worker disconnected.
        self.suppression_age = Gauge(
            wire.SUPPRESSION_CACHE_AGE_SECONDS, "Seconds since this filter's "
            "suppression cache was last confirmed up to date with the unsubscribe store "
            "(1e9 before the first snapshot)", multiprocess_mode="livemax", registry=registry)
        self.suppression_lag = Gauge(
            wire.SUPPRESSION_CACHE_LAG_SEQUENCES, "Changes committed at the "
            "unsubscribe store that this filter has not applied yet",
            multiprocess_mode="livemax", registry=registry)
        self.suppression_connected = Gauge(
            wire.SUPPRESSION_CACHE_CONNECTED, "1 while every worker's Watch "
            "stream to the unsubscribe store is open", multiprocess_mode="livemin",
            registry=registry)
        self.suppression_fresh = Gauge(
            wire.SUPPRESSION_CACHE_FRESH, "1 while every worker answers "
            "SUPPRESSION_FRESH (loaded and up to date within --suppression-stale-after)",
            multiprocess_mode="livemin", registry=registry)
        self.suppression_entries = Gauge(
            "mailwarden_filter_suppression_cache_entries", "Suppressed addresses held",
            multiprocess_mode="livemax", registry=registry)
        self.suppression_propagation = Histogram(
            "mailwarden_filter_suppression_propagation_seconds", "Seconds from a change's "
            "commit at the unsubscribe store to this filter applying it (an unsubscribe "
            "becoming visible in Classify); one observation per worker and change streamed "
            "by Watch (changes loaded with a snapshot are not observed)",
            buckets=PROPAGATION_BUCKETS, registry=registry)
        self.stale_suppression_answers = Counter(
            "mailwarden_filter_stale_suppression_responses_total", "Classify responses marked "
            "SUPPRESSION_STALE", registry=registry)
        # Sender authentication (policies with authentication.enabled).
        self.dns_lookups = Counter(
            "mailwarden_filter_dns_lookups_total", "DNS lookups of the authentication "
            "checks, by outcome: cached (answered from the cache), ok, nxdomain, nodata, "
            "or a temporary failure (timeout, servfail, refused, unreachable, "
            "resolver-down = every server paused after repeated timeouts)", ["outcome"],
            registry=registry)
        self.dns_duration = Histogram(
            "mailwarden_filter_dns_lookup_duration_seconds", "Time of DNS lookups that "
            "went to a server (cache hits are not observed)", buckets=DNS_BUCKETS,
            registry=registry)
        self.auth_gather = Histogram(
            "mailwarden_filter_auth_dns_seconds", "Time one message waited for the DNS "
            "answers its authentication needed (0 when all came from the cache)",
            buckets=DNS_BUCKETS, registry=registry)
        self.auth_temperrors = Counter(
            "mailwarden_filter_auth_temperrors_total", "Messages whose SPF, DKIM or DMARC "
            "check could not be completed because DNS did not answer in time (answered "
            "TEMPERROR, never an error to the caller)", ["method"], registry=registry)
        for method in AUTH_METHODS:
            self.auth_temperrors.labels(method)
        for method in METHODS:  # export zero series from the start, so rates work at once
            self.duration.labels(method)
            self.requests.labels(method, "OK")

    def suppression_cache_updated(self, stats: "object", stale_after: float) -> None:
        age = stats.age_seconds  # type: ignore[attr-defined]
        self.suppression_age.set(age if age != float("inf") else 1e9)
        self.suppression_lag.set(stats.lag)  # type: ignore[attr-defined]
        self.suppression_connected.set(1 if stats.connected else 0)  # type: ignore[attr-defined]
        self.suppression_fresh.set(1 if stats.fresh(stale_after)  # type: ignore[attr-defined]
                                   else 0)
        self.suppression_entries.set(stats.size)  # type: ignore[attr-defined]

    # --- filter_server.auth.service.AuthMetrics -----------------------------------------
    def dns_lookup(self, outcome: str, seconds: float) -> None:
        self.dns_lookups.labels(outcome if outcome in DNS_OUTCOMES else "error").inc()
        if outcome != "cached":
            self.dns_duration.observe(seconds)

    def gathered(self, seconds: float, temperrors: list[str]) -> None:
        self.auth_gather.observe(seconds)
        for method in temperrors:
            self.auth_temperrors.labels(method).inc()

    def policy_swapped(self, old_hash: str | None, new_hash: str, rules: int) -> None:
        if old_hash and old_hash != new_hash:
            self.policy_info.labels(old_hash).set(0)
        self.policy_info.labels(new_hash).set(1)
        self.policy_loaded.set(time.time())
        self.policy_rules.set(rules)


class SupervisorCollector:
    """Metrics only the supervisor knows: how many workers run and how often they died."""

    def __init__(self, supervisor: "object") -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        workers = GaugeMetricFamily("mailwarden_filter_workers",
                                    "Worker processes alive in this server")
        workers.add_metric([], self._supervisor.alive_workers())  # type: ignore[attr-defined]
        yield workers
        restarts = CounterMetricFamily("mailwarden_filter_worker_restarts_total",
                                       "Worker processes restarted after they died")
        restarts.add_metric([], self._supervisor.restarts)  # type: ignore[attr-defined]
        yield restarts


def bare_host(host: str) -> str:
    """`[::]` → `::` (gRPC takes brackets, socket APIs do not)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def serve_metrics(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics in a daemon thread; returns the bound port (useful with port 0)."""
    server, _thread = start_http_server(port, addr=bare_host(host), registry=registry)
    return int(server.server_port)


class WorkerFilesCollector:
    """Sums every worker's metric files in `directory` (prometheus-client multiprocess mode).

    A scrape lists the files, then reads them; if the supervisor removes a dead worker's
    live-gauge files in between, prometheus-client raises and the scrape answers 500. Both
    go through `lock`, so a scrape never sees a half-removed worker; files of workers still
    starting are skipped."""

    def __init__(self, directory: str) -> None:
        from prometheus_client import multiprocess

        self.directory = directory
        self.lock = threading.Lock()
        self._collector = multiprocess.MultiProcessCollector(None, path=directory)

    def collect(self):  # noqa: ANN201 - prometheus-client's collector protocol
        with self.lock:
            # A worker that is starting creates its file empty, then sizes it: such a file
            # holds no values yet, and prometheus-client cannot read it.
            files = [f for f in glob.glob(os.path.join(self.directory, "*.db"))
                     if _size(f) > 0]
            return list(self._collector.merge(files, accumulate=True))

    def mark_process_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        with self.lock:
            multiprocess.mark_process_dead(pid, self.directory)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def multiprocess_registry(directory: str) -> tuple[CollectorRegistry, WorkerFilesCollector]:
    """A registry that sums every worker's values found in `directory`."""
    registry = CollectorRegistry()
    files = WorkerFilesCollector(directory)
    registry.register(files)
    return registry, files
