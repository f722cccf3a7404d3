"""What the e2e suite needs from a cluster provider, whichever it is.

A provider brings up a Kubernetes cluster with three schedulable nodes in two zones
(`topology.kubernetes.io/zone` zone-a, zone-b, zone-b), metrics-server, cluster DNS and
ClusterIP routing, and a default StorageClass; it makes the Mailwarden image available to
its nodes and tells the suite how to reach the cluster. Everything after that -- the chart,
the namespace, the model, the examples -- is the same on every provider (e2e/install.py).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class ProviderError(RuntimeError):
    """The cluster could not be brought up (the message says what failed)."""


@dataclass(frozen=True)
class Cluster:
    """How the suite reaches a running cluster."""
    provider: str
    kubeconfig: Path
    # PATH for kubectl and helm (the kubectl matching the server comes first).
    path: str
    # The image the suite's client Jobs run (the Mailwarden image on these nodes).
    image: str
    # `helm install --set` values that make the chart use that image.
    chart_values: dict[str, str] = field(default_factory=dict)
    # An address of this machine that pods can reach (a PostgreSQL for the store listens
    # there), and the source ranges its connections come from (for pg_hba.conf).
    host_address: str | None = None
    pod_sources: tuple[str, ...] = ()
    # The API server's audit log (JSON lines, writes at Metadata level), when there is one.
    audit_log: Path | None = None
    # The cluster DNS (the pods' nameserver, HOST or HOST:PORT) when this machine can query
    # it too: the suite then asks it what the filter pods' sender authentication asked.
    dns_server: str | None = None
    # Fault injection on the nodes themselves, when the provider can (the process
    # provider): node loss and pod crashes by SIGKILL.
    faults: "NodeFaults | None" = None

    def env(self) -> dict[str, str]:
        """Environment for kubectl/helm against this cluster (never the user's context)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": self.path}


class NodeFaults(Protocol):
    """What a fault test may do to the machines under the cluster."""

    def kill_node(self, name: str) -> None:
        """SIGKILL the node's agent and every process of its pods, remove their network
        namespaces; the Node object stays and stops renewing its lease."""

    def restart_node(self, name: str) -> None:
        """Start a killed node's agent again; returns once the Node is Ready."""

    def blackhole(self, addresses: list[str]) -> None:
        """Drop every packet to these pod IPs silently (a vanished machine's silence)."""

    def unblackhole(self, addresses: list[str]) -> None:
        """Undo `blackhole`."""

    def kill_pod(self, name: str, pod_uid: str) -> int:
        """SIGKILL every process of one pod on node `name` (a crash, not a deletion)."""


class Provider(ABC):
    """One way to get a cluster. `up()` returns once the nodes are Ready; `down()` removes
    everything `up()` made and is safe to call twice (also after a failed `up()`)."""

    name: str

    @abstractmethod
    def skip_reason(self) -> str | None:
        """Why the suite cannot run on this provider here (None: it can)."""

    @abstractmethod
    def up(self, out: Path) -> Cluster:
        """Bring the cluster up; `out` holds logs and files worth keeping."""

    @abstractmethod
    def down(self) -> None:
        """Tear everything down."""

    @abstractmethod
    def collect_logs(self, directory: Path) -> None:
        """Copy the cluster's own logs (components, nodes) into `directory` after a failure."""
