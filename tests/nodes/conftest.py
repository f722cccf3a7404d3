"""A real control plane (e2e/cluster) with three process node agents (e2e/nodes) and the
cluster DNS, shared by the tests in this folder and torn down at the end."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from kubernetes import client

from e2e.cluster import ControlPlane
from e2e.nodes import ClusterInfo, NodeAgents, NodeSpec, cluster_ranges

NODES = [NodeSpec("node-a", "zone-a"), NodeSpec("node-b", "zone-b"), NodeSpec("node-c", "zone-b")]


@dataclass
class Cluster:
    cp: ControlPlane
    nodes: NodeAgents
    api: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    def kubectl(self, *args: str, timeout: float = 60, check: bool = True,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.cp.bin_dir / "kubectl"), "--kubeconfig",
                                 str(self.cp.kubeconfig), *args], capture_output=True,
                                text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str) -> None:
        docs = manifest if isinstance(manifest, list) else [manifest]
        self.kubectl("apply", "-n", namespace, "-f", "-",
                     input="\n".join(json.dumps(d) for d in docs))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = Path(tmp_path_factory.mktemp("nodes-cluster"))
    pods, services = cluster_ranges(workdir)
    with ControlPlane(workdir / "cp", cluster_cidr=pods, service_cidr=services) as cp:
        nodes = NodeAgents(workdir / "nodes", ClusterInfo.from_control_plane(cp), NODES,
                           local_volumes=1)
        try:
            nodes.start()
            yield Cluster(cp=cp, nodes=nodes, api=cp.api_client())
        finally:
            nodes.stop()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # The ServiceAccount controller makes "default" a moment later; pods need it.
    wait_for(lambda: _has_default_sa(cluster, name), 30, f"ServiceAccount {name}/default")
    yield name
    cluster.core.delete_namespace(name)


def _has_default_sa(cluster: Cluster, ns: str) -> bool:
    try:
        cluster.core.read_namespaced_service_account("default", ns)
        return True
    except client.ApiException:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
