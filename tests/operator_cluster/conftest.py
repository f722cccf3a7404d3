"""The operator's behaviour on a real cluster: the control plane (e2e/cluster,
docs/control-plane.md) with two process node agents and the cluster DNS (e2e/nodes,
docs/node-agent.md), so Deployments get Running and Ready pods. One cluster for this
folder, started once and stopped after its last test, with Mailwarden's CRDs (generated,
from `crds/`) installed by the tests that need them.

The API server's audit log records every write (docs/control-plane.md) and, here, every
request of the operator's ServiceAccount too (reads, lists, watches): the tests count what
the operator asked for."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from e2e.cluster import ControlPlane
from e2e.cluster import controlplane as controlplane_module
from e2e.nodes import ClusterInfo, NodeAgents, NodeSpec, cluster_ranges
from tests.operator_cluster.kubeapi import OPERATOR_USER, install_crds
from tests.operator_cluster.operator_proc import OperatorOnCluster

NODES = [NodeSpec("node-a", "zone-a"), NodeSpec("node-b", "zone-b")]
AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: Metadata
    users: ["{OPERATOR_USER}"]
  - level: None
"""


def ranges_in_use() -> set[str]:
    """The /16 prefixes ("10.101.") of addresses on `lo` and of routes: other clusters on
    this machine (another suite, another developer) hold them."""
    import ipaddress
    import subprocess
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True).stdout + \
        subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                       text=True).stdout
    prefixes = set()
    for word in out.split():
        try:
            net = ipaddress.ip_network(word.split("/")[0] + "/16", strict=False)
        except ValueError:
            continue
        prefixes.add(str(net.network_address).rsplit(".", 2)[0] + ".")
    return prefixes


def free_workdir(base: Path) -> tuple[Path, str, str]:
    """A workdir under `base` whose derived cluster and Service CIDRs no other cluster on
    this machine uses (cluster_ranges has 64 and 16 of them: collisions are likely when
    several suites run at once)."""
    used = ranges_in_use()
    for i in range(256):
        workdir = base / f"cluster{i}"
        pods, services = cluster_ranges(workdir)
        if not {pods.rsplit(".", 2)[0] + ".", services.rsplit(".", 2)[0] + "."} & used:
            return workdir, pods, services
    raise RuntimeError("no free cluster/Service CIDR pair: too many clusters on this machine")


class QuickAutoscalingControlPlane(ControlPlane):
    """The control plane with a quicker autoscaler loop: tests that wait for an HPA's
    first CPU reading (ScalingActive True) wait for metrics-server's scrapes (15 s; it
    accepts no shorter resolution than that with its kubelet timeout) and then for an
    HPA sync (15 s by default, 5 s here)."""

    def _controller_manager_argv(self, bins: Path) -> list[str]:
        return [*super()._controller_manager_argv(bins),
                "--horizontal-pod-autoscaler-sync-period=5s"]


@pytest.fixture(scope="package")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    workdir, pods, services = free_workdir(Path(tmp_path_factory.mktemp("operator-cluster")))
    cp = QuickAutoscalingControlPlane(workdir / "cp", cluster_cidr=pods, service_cidr=services)
    # The control plane writes its audit policy from this constant when it starts.
    default_policy = controlplane_module.AUDIT_POLICY
    controlplane_module.AUDIT_POLICY = AUDIT_POLICY
    try:
        cp.start()
    finally:
        controlplane_module.AUDIT_POLICY = default_policy
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="package")
def nodes(control_plane: ControlPlane) -> Iterator[NodeAgents]:
    agents = NodeAgents(control_plane.workdir.parent / "nodes",
                        ClusterInfo.from_control_plane(control_plane), NODES)
    try:
        agents.start()
        yield agents
    finally:
        agents.stop()


@pytest.fixture(scope="package")
def crds_installed(control_plane: ControlPlane) -> list[str]:
    """The names of the CRDs in `crds/`, created and Established."""
    return install_crds(control_plane)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(control_plane.api_client())
    core.create_namespace({"metadata": {"name": name}})
    yield name
    # Its pods stop (the node agents run them as processes) and its objects go.
    core.delete_namespace(name)


RESYNC_SECONDS = 3.0


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, nodes: NodeAgents, crds_installed: list[str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorOnCluster]:
    """`mailwarden operator` on the host under the chart's ServiceAccount, one per test
    module, resyncing every few seconds."""
    proc = OperatorOnCluster(control_plane, tmp_path_factory.mktemp("operator"),
                             resync=RESYNC_SECONDS)
    try:
        yield proc.start()
    finally:
        proc.stop()
