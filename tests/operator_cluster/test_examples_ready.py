"""The examples become Ready on a real cluster with real pods (issue 13 item 3): the
production SpamPolicy serves gRPC over mutual TLS, and its pods are probed on the plaintext
health port, so they become Ready and the policy with them."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from kubernetes import client

from e2e.cluster import ControlPlane
from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from mailwarden_operator.spampolicy import naming
from testkit.processes import mailwarden_argv
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


LEARN_MESSAGE = b"From: a@example.org\r\nSubject: cheap\r\n\r\nviagra pharmacy deal\r\n"


def test_a_learning_spampolicy_records_labelled_mail_with_the_operators_token(
        control_plane: ControlPlane, operator: OperatorOnCluster, namespace: str,
        tmp_path: Path) -> None:
    """spec.learning (issue 21): the operator generates the admin token into a Secret and
    mounts it with the claim; `mailwarden learn` with that token is recorded in the volume,
    a call without it is refused."""
    core = client.CoreV1Api(control_plane.api_client())
    folder = tmp_path / "learn-volume"
    folder.mkdir(mode=0o755)  # root-owned, as a disk an administrator formatted
    pv = f"{namespace}-learn"
    core.create_persistent_volume({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                 "local": {"path": str(folder)},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In",
                      "values": ["node-a"]}]}]}}}})
    try:
        core.create_namespaced_persistent_volume_claim(namespace, {
            "metadata": {"name": "learned"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                     "volumeName": pv, "resources": {"requests": {"storage": "1Gi"}}}})
        body = {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
                "metadata": {"name": "learner", "namespace": namespace},
                "spec": {"policy": {"rules": [{"name": "R1", "target": "body",
                                               "pattern": "viagra", "score": 5}]},
                         # One pod is enough to prove the path, and starts sooner.
                         "replicas": {"min": 1, "max": 1},
                         "learning": {"enabled": True, "claimName": "learned"}}}
        # The CRD's CEL rules, on the real API server.
        for learning, message in (({"enabled": True}, "needs learning.claimName"),
                                  ({"enabled": True, "claimName": "learned",
                                    "subPath": "a/../b"}, "no leading / and no ..")):
            bad = {**body, "spec": {**body["spec"], "learning": learning}}
            refused_apply = kubectl(control_plane, "apply", "--dry-run=server", "-f", "-",
                                    stdin=yaml.safe_dump(bad))
            assert refused_apply.returncode != 0 and message in refused_apply.stderr, \
                refused_apply.stderr
        done = kubectl(control_plane, "apply", "-f", "-", stdin=yaml.safe_dump(body))
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for("the learning SpamPolicy Ready", lambda: ready(
            get(control_plane, namespace, "spampolicies", "learner")), timeout=120,
            interval=1)
        secret = core.read_namespaced_secret("learner-learn-token", namespace)
        token = base64.b64decode(secret.data["token"]).decode()
        assert secret.metadata.owner_references[0].kind == "SpamPolicy"
        pod = next(p for p in core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/instance=learner").items
            if p.status.pod_ip and any(c.type == "Ready" and c.status == "True"
                                       for c in p.status.conditions or []))
        target = f"{pod.status.pod_ip}:{naming.GRPC_PORT}"

        with grpc.insecure_channel(target) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                filter_pb2_grpc.LearningStub(channel).Learn(filter_pb2.LearnRequest(
                    request_id="no-token", message=LEARN_MESSAGE,
                    label=filter_pb2.LABEL_SPAM, origin=filter_pb2.USER_REPORT), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        message = tmp_path / "reported.eml"
        message.write_bytes(LEARN_MESSAGE)
        credential = tmp_path / "token"
        credential.write_text(token)
        learnt = subprocess.run(
            [*mailwarden_argv("learn"), "--spam", str(message),
             "--target", target, "--credential-file", str(credential)],
            capture_output=True, text=True, timeout=60)
        assert learnt.returncode == 0, learnt.stdout + learnt.stderr
        assert token not in learnt.stdout + learnt.stderr
        stored = folder / "spam" / f"{hashlib.sha256(LEARN_MESSAGE).hexdigest()}.eml"
        assert stored.read_bytes() == LEARN_MESSAGE
        assert not list((folder / "ham").iterdir())
    finally:
        client.CustomObjectsApi(control_plane.api_client()).delete_namespaced_custom_object(
            "mailwarden.dev", "v1alpha1", namespace, "spampolicies", "learner")
        core.delete_persistent_volume(pv)
