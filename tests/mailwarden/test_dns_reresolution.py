"""The client behind a headless Service's DNS name follows the Service when the pod it
used stops: it re-resolves promptly and reaches the new pod, instead of waiting out gRPC's
default 30 s between re-resolutions with no live address (the stall the fault suite's
rollout scenario measured: calls waited until their deadline although the new pods were
ready).

Real parts: two `mailwarden serve` processes on two loopback addresses sharing one port
(as pods share their containerPort), a real DNS server (dnslib) standing in for cluster
DNS, and the client's own gRPC DNS resolver pointed at it."""

from __future__ import annotations

import random
import signal
from pathlib import Path

from mailwarden.client import ClassifyError, FilterClient
from tests.fault.dns import ServiceDNS
from testkit.filter import HAM, Server


class PodServer(Server):
    """A server on its own loopback address (the harness' default is 127.0.0.1)."""

    def __init__(self, workdir: Path, policy_dir: Path, host: str, port: int,
                 *extra: str) -> None:
        super().__init__(workdir, policy_dir,
                         ["--host", host, "--grpc-port", str(port), *extra], workers=1)
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def metrics_text(self) -> str:
        import urllib.request

        url = f"http://{self.host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()


def test_client_reaches_the_new_pod_when_the_old_one_stops(tmp_path: Path,
                                                           policy_dir: Path) -> None:
    net = f"127.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
    started: list[PodServer] = []
    dns = None
    try:
        old = PodServer(tmp_path, policy_dir, f"{net}.2", 0, "--drain-seconds", "0.3",
                        "--grace-seconds", "1")
        started.append(old)
        old.wait_serving()
        new = PodServer(tmp_path, policy_dir, f"{net}.3", old.grpc_port)
        started.append(new)
        new.wait_serving()
        endpoints = [old.host]
        dns = ServiceDNS("filter-headless.mail.svc.cluster.local", lambda: list(endpoints))
        dns.start()
        with FilterClient(dns.target(old.grpc_port), deadline=3) as client:
            client.classify(HAM)  # connected to the old pod, the only one in DNS
            # A rollout step: the Service now lists only the new pod; the old one stops.
            endpoints[:] = [new.host]
            old.signal(signal.SIGTERM)
            assert old.wait_exit(30) == 0
            failures = []
            for _ in range(10):
                try:
                    client.classify(HAM)
                except ClassifyError as exc:
                    failures.append(exc.code.name)
                    if len(failures) == 3:
                        break  # enough to tell; each one waits out the deadline
        assert failures == [], f"calls failed after the old pod stopped: {failures}"
        assert new.metric("mailwarden_filter_requests_total", code="OK") >= 10
    finally:
        if dns is not None:
            dns.stop()
        for server in started:
            server.kill()
