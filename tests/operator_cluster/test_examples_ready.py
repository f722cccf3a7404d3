"""The examples become Ready on a real cluster with real pods (issue 13 item 3): the
production SpamPolicy serves gRPC over mutual TLS, and its pods are probed on the plaintext
health port, so they become Ready and the policy with them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.cluster import ControlPlane
from tests.filter_server.server.certs import make_ca, make_cert
from tests.operator_cluster.kubeapi import REPO, kubectl, wait_for
from tests.operator_cluster.operator_proc import OperatorOnCluster

pytestmark = pytest.mark.slow


def model_bytes() -> bytes:
    from filter_server.bayes.model import BayesModel
    return BayesModel(nspam=3, nham=3, counts={"viagra": (3, 0), "pharmacy": (3, 0),
                                               "meeting": (0, 3), "agenda": (0, 3)}).to_bytes()


def example(name: str, kind: str, namespace: str) -> dict[str, Any]:
    docs = yaml.safe_load_all((REPO / "examples" / name).read_text())
    body = next(d for d in docs if d and d["kind"] == kind)
    body["metadata"]["namespace"] = namespace
    return body


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def get(cp: ControlPlane, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(cp.api_client()).get_namespaced_custom_object(
        "mailwarden.dev", "v1alpha1", namespace, plural, name)


def ready(body: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (body.get("status") or {}).get("conditions") or [])


def test_the_production_spampolicy_becomes_ready_over_mutual_tls(
        control_plane: ControlPlane, operator: OperatorOnCluster, namespace: str,
        tmp_path: Path) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    core.create_namespaced_config_map(namespace, {
        "metadata": {"name": "mailwarden-model"},
        "binaryData": {"model.json.gz": b64(model_bytes())}})
    ca = make_ca(tmp_path, "ca")
    server = make_cert(tmp_path, "filter", ca, server=True)
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "filter-tls"}, "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(server.crt.read_bytes()), "tls.key": b64(server.key.read_bytes()),
                 "ca.crt": b64(ca.crt.read_bytes())}})
    body = example("spampolicy-production.yaml", "SpamPolicy", namespace)
    assert body["spec"]["tls"]["requireClientCert"] is True
    done = kubectl(control_plane, "apply", "-f", "-", stdin=yaml.safe_dump(body))
    assert done.returncode == 0, done.stdout + done.stderr
    name = body["metadata"]["name"]
    minimum = body["spec"]["replicas"]["min"]
    try:
        wait_for("the production SpamPolicy Ready", lambda: ready(
            get(control_plane, namespace, "spampolicies", name)), timeout=200, interval=2)
    except AssertionError:
        pods = core.list_namespaced_pod(namespace).items
        raise AssertionError(
            f"not Ready: {get(control_plane, namespace, 'spampolicies', name).get('status')}; "
            f"pods: {[(p.metadata.name, p.status.phase, p.status.conditions) for p in pods]}"
        ) from None
    status = get(control_plane, namespace, "spampolicies", name)["status"]
    assert status["readyReplicas"] >= minimum
    pods = [p for p in core.list_namespaced_pod(namespace).items
            if p.metadata.labels.get("app.kubernetes.io/instance") == name]
    for pod in pods:
        container = pod.spec.containers[0]
        assert container.readiness_probe.grpc.port == 9092
        assert "--tls-dir" in container.args and "--require-client-cert" in container.args
