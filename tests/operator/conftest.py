"""Fixtures for the operator tests: the KMock emulator over HTTP, the real operator in a
subprocess (`mailwarden operator`, kopf + kubernetes client), and a stand-in for the
Deployment controller (the emulator has no controllers: see FakeDeploymentController)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from kubernetes import client as k8s

from mailwarden_operator import crd
from mailwarden_operator.common.kube import DEPLOYMENTS, Kube, KubeError, Resource
from mailwarden_operator.spampolicy import naming
from testkit.processes import ServerProcess, free_port, scraped_total
from tests.operator.emulator import EmulatorThread

REPO = Path(__file__).resolve().parents[2]
MAILWARDEN = Path(sys.executable).parent / "mailwarden"
PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", False)
# The User-Agent of the tests' own client (and the fake controller), so the requests the
# operator made can be told apart in the emulator's log.
TEST_AGENT = "mailwarden-tests"
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (KeyError, TypeError, KubeError, OSError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


class Cluster:
    """An emulated API server with the CRDs installed, plus a client for the test."""

    def __init__(self, emulator: EmulatorThread) -> None:
        self.emulator = emulator
        for body in crd.all_crds().values():
            emulator.register_crd(body)
        configuration = k8s.Configuration()
        configuration.host = emulator.url
        api = k8s.ApiClient(configuration)
        api.user_agent = TEST_AGENT
        self.kube = Kube(api)
        self.kube.create(PEERINGS, None, {"apiVersion": "kopf.dev/v1",
                                          "kind": "ClusterKopfPeering",
                                          "metadata": {"name": "mailwarden"}})

    def writes(self, *, exclude_groups: tuple[str, ...] = ("kopf.dev",)) -> list[str]:
        """Every create/patch/put/delete the emulator has served, as 'METHOD path'."""
        out = []
        for method, path, group in self.emulator.requests():
            if method in ("GET", "HEAD", "OPTIONS", "DRYRUN") or group in exclude_groups:
                continue
            out.append(f"{method} {path}")
        return out

    def operator_requests(self):
        """Every request the operator (anything but the tests' own client) made."""
        return [r for r in self.emulator.detailed_requests() if r.agent != TEST_AGENT]


class OperatorProcess(ServerProcess):
    """`mailwarden operator` against the emulator, on ephemeral loopback ports."""

    def __init__(self, cluster: Cluster, workdir: Path, *extra: str, name: str = "operator",
                 resync: float = 1.0, webhook_cert_dir: Path | None = None) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.webhook_port = free_port()
        kubeconfig = cluster.emulator.kubeconfig(workdir)
        super().__init__(
            name,
            [str(MAILWARDEN), "operator", "--kubeconfig", str(kubeconfig),
             "--listen-address", "127.0.0.1",
             "--metrics-port", str(self.metrics_port),
             "--liveness-port", str(self.liveness_port),
             "--webhook-port", str(self.webhook_port),
             *(("--webhook-cert-dir", str(webhook_cert_dir)) if webhook_cert_dir
               else ("--webhook-insecure",)),
             "--resync-seconds", str(resync),
             "--filter-image", "registry.example/mailwarden:test", *extra],
            log_path=workdir / f"{name}.log", env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=REPO)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process

    def start(self) -> "OperatorProcess":
        super().start()
        self.wait_until(self.live, what="the operator's liveness endpoint", timeout=60)
        return self

    def live(self) -> bool:
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as rsp:
            return rsp.status == 200

    def metric(self, metric_name: str, /, **labels: str) -> float:
        return scraped_total(f"http://127.0.0.1:{self.metrics_port}/metrics", metric_name,
                             **labels)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class FakeDeploymentController:
    """Stands in for kube-controller-manager, which the emulator lacks: when a managed
    Deployment's generation is ahead of its status, it reports the rollout as done
    (every replica updated, ready, available). `hold()` pauses it to keep a rollout
    in progress."""

    def __init__(self, kube: Kube, interval: float = 0.1) -> None:
        self.kube = kube
        self.interval = interval
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-kcm")

    def __enter__(self) -> "FakeDeploymentController":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def hold(self) -> None:
        self._paused.set()

    def release(self) -> None:
        self._paused.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._paused.is_set():
                continue
            try:
                for dep in self.kube.list(DEPLOYMENTS, None):
                    self._step(dep)
            except KubeError:
                continue

    def _step(self, dep: dict[str, Any]) -> None:
        meta = dep["metadata"]
        status = dep.get("status") or {}
        generation = meta.get("generation", 1)
        if status.get("observedGeneration") == generation:
            return
        replicas = dep["spec"].get("replicas", 1)
        self.kube.merge_patch(DEPLOYMENTS, meta["namespace"], meta["name"], {"status": {
            "observedGeneration": generation, "replicas": replicas,
            "updatedReplicas": replicas, "readyReplicas": replicas,
            "availableReplicas": replicas}}, subresource="status")


def example_policy(namespace: str, name: str, **spec_changes: Any) -> dict[str, Any]:
    body = yaml.safe_load((REPO / "examples" / "spampolicy.yaml").read_text())
    body = copy.deepcopy(body)
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"].update(spec_changes)
    return body


def model_configmap(namespace: str, payload: bytes = b"model-bytes") -> dict[str, Any]:
    import base64
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "mailwarden-model", "namespace": namespace},
            "binaryData": {"model.json.gz": base64.b64encode(payload).decode()}}


def condition(body: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for item in ((body or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == ctype:
            return item
    return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with EmulatorThread() as emulator:
        yield Cluster(emulator)


@pytest.fixture(scope="module")
def controller(cluster: Cluster) -> Iterator[FakeDeploymentController]:
    with FakeDeploymentController(cluster.kube) as fake:
        yield fake


@pytest.fixture(scope="module")
def operator(cluster: Cluster, controller: FakeDeploymentController,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    try:
        yield proc.start()
    finally:
        proc.stop()


__all__ = ["Cluster", "OperatorProcess", "FakeDeploymentController", "wait_for",
           "example_policy", "model_configmap", "condition", "naming", "free_port"]
