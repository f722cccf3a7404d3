"""rollout.strategy Shadow on the real API server with the real operator and real pods
(issue 18): the CRD admits and defaults the fields, a policy change is shadowed (the
Deployment keeps serving the running hash and mounts the candidate), the pods answer with the
live policy while counting the candidate's verdicts, the operator sums those into
status.shadow, and `kubectl annotate ... promote-policy=<hash>` promotes it through kopf's
watch event — no spec change, no resync needed."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import yaml
from kubernetes import client

from e2e.cluster import ControlPlane
from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from mailwarden_operator.spampolicy import naming
from tests.operator_cluster.kubeapi import kubectl, wait_for
from tests.operator_cluster.operator_proc import OperatorOnCluster

pytestmark = pytest.mark.slow


def apply(cp: ControlPlane, body: dict[str, Any]) -> None:
    done = kubectl(cp, "apply", "--server-side", "--field-manager", "tests", "-f", "-",
                   stdin=yaml.safe_dump(body))
    assert done.returncode == 0, done.stdout + done.stderr


def policy(namespace: str, *extra: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
            "metadata": {"name": "mail", "namespace": namespace},
            "spec": {"policy": {"rules": [{"name": "R1", "target": "body",
                                           "pattern": "viagra", "score": 5}, *extra]},
                     "rollout": {"strategy": "Shadow", "shadow": {"sampleRate": 1}}}}


PHARMACY = {"name": "PHARMACY", "target": "body", "pattern": "pharmacy", "score": 20}
SPAM = b"Subject: deal\r\n\r\nviagra from our pharmacy\r\n"


def classify_on_a_shadowing_pod(cp: ControlPlane, namespace: str, candidate: str) -> bool:
    """Send SPAM to every ready pod that shadows `candidate`; False while there is none."""
    pods = client.CoreV1Api(cp.api_client()).list_namespaced_pod(
        namespace, label_selector=",".join(f"{k}={v}" for k, v in
                                           naming.selector_labels("mail").items())).items
    shadowing = [p for p in pods if p.status.pod_ip and not p.metadata.deletion_timestamp
                 and (p.metadata.annotations or {}).get(naming.SHADOW_HASH_ANNOTATION)
                 == candidate and any(c.type == "Ready" and c.status == "True"
                                      for c in p.status.conditions or [])]
    for pod in shadowing:
        with grpc.insecure_channel(f"{pod.status.pod_ip}:{naming.GRPC_PORT}") as channel:
            answer = filter_pb2_grpc.FilterStub(channel).Classify(
                filter_pb2.ClassifyRequest(request_id="shadow", message=SPAM), timeout=10)
            assert answer.action == filter_pb2.TAG  # the live policy answers (score 5)
    return bool(shadowing)


def template_hashes(cp: ControlPlane, namespace: str) -> tuple[str | None, str | None]:
    try:
        deployment = client.AppsV1Api(cp.api_client()).read_namespaced_deployment(
            naming.workload_name("mail"), namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None, None
        raise
    annotations = deployment.spec.template.metadata.annotations or {}
    return (annotations.get(naming.HASH_ANNOTATION),
            annotations.get(naming.SHADOW_HASH_ANNOTATION))


def status(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    body = client.CustomObjectsApi(cp.api_client()).get_namespaced_custom_object(
        "mailwarden.dev", "v1alpha1", namespace, "spampolicies", "mail")
    return body.get("status") or {}


def test_a_change_is_shadowed_until_the_annotation_promotes_it(
        control_plane: ControlPlane, operator: OperatorOnCluster, namespace: str) -> None:
    apply(control_plane, policy(namespace))
    first = wait_for("the first policy served", lambda: template_hashes(
        control_plane, namespace)[0], timeout=60)
    assert template_hashes(control_plane, namespace)[1] is None

    apply(control_plane, policy(namespace, PHARMACY))
    candidate = wait_for("the candidate shadowed", lambda: status(
        control_plane, namespace).get("shadowPolicyHash"), timeout=60)
    # The agreement summary is in status with it (what the pods counted so far).
    shadow = status(control_plane, namespace).get("shadow") or {}
    assert shadow.get("policyHash") == candidate, status(control_plane, namespace)
    assert template_hashes(control_plane, namespace) == (first, candidate)
    body = client.CustomObjectsApi(control_plane.api_client()).get_namespaced_custom_object(
        "mailwarden.dev", "v1alpha1", namespace, "spampolicies", "mail")
    assert body["spec"]["rollout"]["shadow"] == {"sampleRate": 1, "cpuFraction": 0.1}

    # Real pods answer with the live policy and count the candidate's verdicts; the
    # operator sums them into status at its resyncs.
    wait_for("a ready pod shadowing the candidate", lambda: classify_on_a_shadowing_pod(
        control_plane, namespace, candidate), timeout=120)
    summary = wait_for("the shadow summary in status", lambda: (
        status(control_plane, namespace).get("shadow") or {}).get("stricter") and
        status(control_plane, namespace)["shadow"], timeout=60)
    assert summary["topRules"][0] == {"rule": "PHARMACY", "change": "added",
                                      "direction": "stricter",
                                      "messages": summary["stricter"]}, summary

    # A promotion naming another hash does nothing; the candidate's own promotes it.
    done = kubectl(control_plane, "annotate", "-n", namespace, "spampolicy/mail",
                   f"{naming.PROMOTE_ANNOTATION}=0000000000000000")
    assert done.returncode == 0, done.stderr
    done = kubectl(control_plane, "annotate", "-n", namespace, "spampolicy/mail",
                   f"{naming.PROMOTE_ANNOTATION}={candidate}", "--overwrite")
    assert done.returncode == 0, done.stderr
    wait_for("the candidate promoted", lambda: template_hashes(control_plane, namespace)
             == (candidate, None), timeout=30)
    wait_for("shadowPolicyHash dropped",
             lambda: "shadowPolicyHash" not in status(control_plane, namespace), timeout=30)
