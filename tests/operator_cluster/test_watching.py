"""What the operator watches and keeps, on a real API server (issue 13 items 11, 12, 13):
only its own Deployments, filtered by the API server; a 2,000-rule policy reconciled without
kopf's diff-base annotation overflowing; a deleted SpamPolicy's metrics gone."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.cluster import ControlPlane
from tests.operator_cluster.kubeapi import kubectl, wait_for
from tests.operator_cluster.operator_proc import AuditLog, OperatorOnCluster

pytestmark = pytest.mark.slow

DIFFBASE = "kopf.mailwarden.dev/last-handled-configuration"


def apply(cp: ControlPlane, body: dict[str, Any]) -> None:
    done = kubectl(cp, "apply", "--server-side", "--field-manager", "tests", "-f", "-",
                   stdin=yaml.safe_dump(body), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def policy(namespace: str, name: str, rules: list[dict[str, Any]], **spec: Any
           ) -> dict[str, Any]:
    return {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"policy": {"rules": rules}, **spec}}


def rule(i: int) -> dict[str, Any]:
    # About the size of the example policy's rules (examples/spampolicy.yaml).
    return {"name": f"BODY_WORD_{i:04d}", "description": f"Body mentions offer number {i}",
            "target": "body", "pattern": rf"(?i)\boffer[-_ ]?{i}\b", "score": 0.1}


def get_policy(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(cp.api_client()).get_namespaced_custom_object(
        "mailwarden.dev", "v1alpha1", namespace, "spampolicies", name)


def condition(body: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in (body.get("status") or {}).get("conditions") or []
                 if c["type"] == ctype), None)


def test_only_our_deployments_are_watched(control_plane: ControlPlane,
                                          operator: OperatorOnCluster, namespace: str) -> None:
    # Someone else's Deployment: the operator must not even receive it.
    client.AppsV1Api(control_plane.api_client()).create_namespaced_deployment(namespace, {
        "metadata": {"name": "other"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "other"}},
                 "template": {"metadata": {"labels": {"app": "other"}}, "spec": {
                     "containers": [{"name": "c", "image": "mailwarden:e2e"}]}}}})
    requests = AuditLog(control_plane).requests(operator.username)
    deployment_streams = [r for r in requests if r.resource == "deployments"
                          and r.verb in ("list", "watch") and r.name is None]
    assert deployment_streams, "the operator never listed or watched Deployments"
    for r in deployment_streams:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(r.uri).query)
        assert query.get("labelSelector") == ["app.kubernetes.io/managed-by="
                                              "mailwarden-operator"], r.uri


def test_a_2000_rule_policy_is_reconciled(control_plane: ControlPlane,
                                          operator: OperatorOnCluster,
                                          namespace: str) -> None:
    body = policy(namespace, "big", [rule(i) for i in range(2000)],
                  replicas={"min": 1, "max": 2})
    spec_bytes = len(json.dumps(body["spec"], separators=(",", ":")))
    print(f"\n2,000-rule spec: {spec_bytes} bytes of JSON")
    audit = AuditLog(control_plane)
    mark = audit.mark()
    apply(control_plane, body)
    wait_for("PolicyValid True", lambda: (c := condition(get_policy(
        control_plane, namespace, "big"), "PolicyValid")) and c["status"] == "True",
        timeout=180)
    wait_for("kopf's diff base", lambda: DIFFBASE in (get_policy(
        control_plane, namespace, "big")["metadata"].get("annotations") or {}), timeout=60)
    annotations = get_policy(control_plane, namespace, "big")["metadata"]["annotations"]
    assert len(annotations[DIFFBASE]) < 200, annotations[DIFFBASE][:300]
    assert json.loads(annotations[DIFFBASE])["spec"]["digest"].startswith("sha256:")
    # Served: the filter pod compiled the policy and reports Ready.
    wait_for("Ready True", lambda: (c := condition(get_policy(
        control_plane, namespace, "big"), "Ready")) and c["status"] == "True", timeout=240)
    time.sleep(5)
    refused = [str(w) for w in audit.writes(operator.username, mark, namespace=namespace)
               if w.code >= 400]
    assert refused == [], refused


def test_a_deleted_spampolicy_leaves_no_metrics(control_plane: ControlPlane,
                                                operator: OperatorOnCluster,
                                                namespace: str) -> None:
    apply(control_plane, policy(namespace, "gone", [rule(1)], replicas={"min": 1, "max": 1}))

    def series() -> float:
        return operator.metric("mailwarden_operator_policy_valid", namespace=namespace,
                               name="gone") + \
            operator.metric("mailwarden_operator_spampolicy_condition", namespace=namespace,
                            name="gone")
    wait_for("the policy's metric series", lambda: series() > 0, timeout=60)
    done = kubectl(control_plane, "delete", "-n", namespace, "spampolicy/gone")
    assert done.returncode == 0, done.stderr

    def exported() -> bool:
        text = urllib_get(operator)
        return f'namespace="{namespace}",' in text and 'name="gone"' in text
    wait_for("the series to disappear", lambda: not exported(), timeout=60)


def urllib_get(operator: OperatorOnCluster) -> str:
    import urllib.request
    with urllib.request.urlopen(operator._url(operator.metrics_port, "/metrics"),
                                timeout=5) as rsp:
        return rsp.read().decode()


def test_the_operators_own_lists_are_paginated(control_plane: ControlPlane,
                                               operator: OperatorOnCluster) -> None:
    """Issue 13 item 18: the resync's cluster-wide LIST of every SpamPolicy (and the
    operator's other lists) asks for pages of 500, not one unbounded response."""
    time.sleep(8)  # a resync round or two (3 s in this folder)
    requests = AuditLog(control_plane).requests(operator.username)
    ours = [r for r in requests if r.verb == "list" and "watch=" not in r.uri
            and r.resource in ("spampolicies", "unsubscribestores")]

    def limit(uri: str) -> list[str] | None:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("limit")
    assert any(limit(r.uri) == ["500"] for r in ours), [r.uri for r in ours][:5]
