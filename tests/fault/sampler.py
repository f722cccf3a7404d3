"""Periodic samples of every pod while a scenario runs: its /metrics (what Prometheus and
the HPA's metrics adapter read) and its process tree's CPU and memory from /proc (what the
kubelet's cAdvisor reports, and what the HPA's CPU utilisation is computed from)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tests.fault.cluster import FilterCluster, metric_sum, scrape
from testkit.procfs import usage


@dataclass(frozen=True)
class Sample:
    at: float
    pod: str
    pid: int
    requests_ok: float          # mailwarden_filter_requests_total{method="Classify",code="OK"}
    requests_all: float         # ... every code
    rejected: float             # mailwarden_filter_capacity_rejections_total
    exported_cpu: float         # process_cpu_seconds_total (the server's own export)
    proc_cpu: float             # /proc: user + system of the process tree
    rss: int                    # /proc: resident bytes of the process tree
    in_flight: float


class Sampler:
    def __init__(self, cluster: FilterCluster, interval: float = 1.0,
                 metrics: bool = True) -> None:
        self.cluster = cluster
        self.interval = interval
        self.metrics = metrics
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def take(self) -> list[Sample]:
        """One round over every pod that is running; returns what it sampled."""
        taken = []
        for pod in list(self.cluster.pods):
            process = pod.process
            if pod.terminating or process is None or process.poll() is not None:
                continue
            proc = usage(process.pid)
            values = {}
            if self.metrics and pod.started:
                try:
                    values = scrape(pod.metrics_address, timeout=5)
                except OSError as exc:
                    self.errors.append(f"{pod.name}: {exc}")
            sample = Sample(
                at=time.monotonic(), pod=pod.name, pid=process.pid,
                requests_ok=metric_sum(values, "mailwarden_filter_requests_total",
                                       method="Classify", code="OK"),
                requests_all=metric_sum(values, "mailwarden_filter_requests_total",
                                        method="Classify"),
                rejected=metric_sum(values, "mailwarden_filter_capacity_rejections_total"),
                exported_cpu=metric_sum(values, "process_cpu_seconds_total"),
                proc_cpu=proc.cpu_seconds, rss=proc.rss_bytes,
                in_flight=metric_sum(values, "mailwarden_filter_in_flight_requests"))
            taken.append(sample)
        self.samples += taken
        return taken

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.take()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(30)
        return self.samples

    def of(self, pod: str) -> list[Sample]:
        return [s for s in self.samples if s.pod == pod]
