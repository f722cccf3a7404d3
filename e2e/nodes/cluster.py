"""What the nodes need to know about the control plane, independent of who started it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse


@dataclass(frozen=True)
class NodeIdentity:
    """A node's credentials (e2e.cluster's NodeCredentials has these fields)."""
    kubeconfig: Path
    serving_cert: Path | None = None
    serving_key: Path | None = None
    ca_cert: Path | None = None


@dataclass(frozen=True)
class ClusterInfo:
    admin_kubeconfig: Path
    api_host: str               # the API server's address, reachable from pods
    api_port: int
    cluster_cidr: str           # pod CIDR of the cluster (Node.spec.podCIDR comes from it)
    service_cidr: str
    dns_ip: str                 # where the cluster DNS listens (pods' nameserver)
    node_identity: Callable[[str, list[str]], NodeIdentity]
    cluster_domain: str = "cluster.local"
    # Starts the real kube-proxy for a node in the host's network namespace (None: not
    # available); with it, ClusterIPs are routed and pods use the normal service variables.
    start_kube_proxy: Callable[[str], Any] | None = None
    # Host directories hidden from every container (the control plane's PKI and state).
    hide_dirs: tuple[Path, ...] = ()

    @classmethod
    def from_control_plane(cls, cp: Any) -> "ClusterInfo":
        """From e2e.cluster.ControlPlane (docs/control-plane.md)."""
        url = urlparse(cp.server)

        def identity(name: str, ips: list[str]) -> NodeIdentity:
            creds = cp.node_credentials(name, ips=ips)
            return NodeIdentity(kubeconfig=Path(creds.kubeconfig),
                                serving_cert=Path(creds.serving_cert),
                                serving_key=Path(creds.serving_key),
                                ca_cert=Path(creds.ca_cert))

        return cls(admin_kubeconfig=Path(cp.kubeconfig), api_host=url.hostname,
                   api_port=url.port or 443, cluster_cidr=cp.cluster_cidr,
                   service_cidr=cp.service_cidr, dns_ip=cp.dns_ip, node_identity=identity,
                   start_kube_proxy=getattr(cp, "start_kube_proxy", None),
                   hide_dirs=(Path(cp.workdir),))
