"""The default provider: Kubernetes' own control plane as processes on this machine
(e2e/cluster, docs/control-plane.md) with three process node agents, the cluster DNS and the
real kube-proxy (e2e/nodes, docs/node-agent.md). No container engine: the Mailwarden image
is this checkout's virtualenv, which the node agents run for every pod whose image is
`ghcr.io/mailwarden/mailwarden` or `mailwarden` (any tag).

Needs root (network namespaces, mounts, cgroups, addresses on `lo`) and the binaries
scripts/bootstrap.sh builds. It never skips: anything missing is an error.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from e2e.providers.base import Cluster, Provider, ProviderError

REPO = Path(__file__).resolve().parents[2]
# Like e2e/kind.yaml's workers: three nodes, two zones.
NODES = (("e2e-a", "zone-a"), ("e2e-b", "zone-b"), ("e2e-c", "zone-b"))
IMAGE = "mailwarden:e2e"
# Local PersistentVolumes per node (the embedded store's claim takes one).
VOLUMES_PER_NODE = 3
# Node heartbeats at a quarter of Kubernetes' defaults' timescale, same proportions: the
# agents renew their lease every 4 s (a 16 s lease; the kubelet's is 40 s, renewed every
# 10 s) and the node-lifecycle controller calls a node NotReady after 20 s without a renewal
# (kube-controller-manager's --node-monitor-grace-period, 50 s by default): five renewal
# periods either way. The real controller still does the detection, tainting and eviction
# (e2e/test_65_node_loss.py); it only happens 30 s sooner, which is CI time.
NODE_LEASE_SECONDS = 16
NODE_MONITOR_GRACE = "20s"


class ProcessProvider(Provider):
    name = "process"

    def __init__(self, workdir: Path | None = None) -> None:
        self._workdir = workdir
        self.workdir: Path | None = None
        self.cp = None
        self.nodes = None
        self.startup: dict[str, float] = {}

    def skip_reason(self) -> str | None:
        return None  # never skipped: up() says what is missing

    def up(self, out: Path) -> Cluster:
        from e2e.cluster import ControlPlane
        from e2e.nodes import ClusterInfo, NodeAgents, NodeSpec, cluster_ranges

        if os.geteuid() != 0:
            raise ProviderError("the process provider needs root (network namespaces, mounts, "
                                "cgroups, addresses on lo); run as root or choose "
                                "MAILWARDEN_E2E_PROVIDER=kind")
        began = time.monotonic()
        # A short path of our own: the control plane derives its addresses from it.
        self.workdir = Path(self._workdir or tempfile.mkdtemp(prefix="mw-e2e-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        pods, services = cluster_ranges(self.workdir)
        self.cp = ControlPlane(
            self.workdir / "cp", cluster_cidr=pods, service_cidr=services,
            controller_manager_args=(f"--node-monitor-grace-period={NODE_MONITOR_GRACE}",))
        self.cp.start()
        self.startup["control plane healthy"] = time.monotonic() - began
        self.nodes = NodeAgents(self.workdir / "nodes", ClusterInfo.from_control_plane(self.cp),
                                [NodeSpec(name, zone) for name, zone in NODES],
                                venv=Path(sys.prefix), kube_proxy=True,
                                local_volumes=VOLUMES_PER_NODE,
                                extra_args=[f"--node-lease-duration={NODE_LEASE_SECONDS}"])
        self.nodes.start()
        self.startup["nodes Ready, kube-proxy syncing"] = time.monotonic() - began
        cp = self.cp
        path = os.pathsep.join([str(cp.bin_dir), str(REPO / ".cache" / "bin"),
                                os.environ.get("PATH", "")])
        return Cluster(provider=self.name, kubeconfig=Path(cp.kubeconfig), path=path,
                       image=IMAGE, host_address=cp.host_ip, pod_sources=(cp.cluster_cidr,),
                       audit_log=cp.logs / "audit.log", dns_server=cp.dns_ip,
                       faults=self.nodes)

    def down(self) -> None:
        if self.nodes is not None:
            # The cluster is thrown away: its pods need no grace period (a graceful stop
            # gives every filter and store pod its preStop and drain, ~20 s here). Killing
            # a node takes its pods' processes and network namespaces with it; stop() then
            # removes the DNS server, the host network and the volumes.
            for name, proc in list(self.nodes.procs.items()):
                if proc.poll() is None:
                    try:
                        self.nodes.kill_node(name)
                    except (OSError, ValueError, KeyError) as exc:  # e.g. no state file yet
                        print(f"e2e: killing node {name} failed ({exc}); stopping it instead")
            self.nodes.stop()
            self.nodes = None
        if self.cp is not None:
            self.cp.stop()
            self.cp = None
        if self.workdir is not None and self._workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def collect_logs(self, directory: Path) -> None:
        if self.workdir is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        cp_logs = self.workdir / "cp" / "logs"
        if cp_logs.is_dir():
            shutil.copytree(cp_logs, directory / "control-plane", dirs_exist_ok=True)
        node_logs = directory / "nodes"
        node_logs.mkdir(exist_ok=True)
        for log in (self.workdir / "nodes").glob("*.log"):
            shutil.copy2(log, node_logs / log.name)
