"""The real operator (`mailwarden operator`: kopf + the kubernetes client, in a subprocess,
over HTTP) against the KMock emulator. Each test uses its own namespace.

The emulator has no controllers, so FakeDeploymentController (conftest) marks rollouts
done; it has no garbage collector, so deletion is checked through owner references."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from pathlib import Path

import pytest

from filter_server.policy.loader import POLICY_FILE, load_policy_dir
from mailwarden_operator.common import naming as common_naming
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.common.kube import (CONFIGMAPS, DEPLOYMENTS, EVENTS, HPAS, PDBS, SERVICES,
                                      SPAMPOLICIES)
from tests.operator.conftest import (Cluster, OperatorProcess,
                                     condition, example_policy, model_configmap, wait_for)

pytestmark = pytest.mark.timeout(240)


def _ready(cluster: Cluster, ns: str, name: str, policy_hash: str | None = None):
    def check():
        body = cluster.kube.get(SPAMPOLICIES, ns, name)
        ready = condition(body, "Ready")
        if not ready or ready["status"] != "True":
            return None
        if policy_hash and body["status"].get("policyHash") != policy_hash:
            return None
        return body
    return wait_for(check, 60, f"SpamPolicy {ns}/{name} Ready")


def _policy_configmaps(cluster: Cluster, ns: str, name: str) -> list[dict]:
    return cluster.kube.list(CONFIGMAPS, ns, {naming.POLICY_LABEL: name,
                                              naming.ROLE_LABEL: "policy"})


def _template_hash(cluster: Cluster, ns: str, name: str) -> str:
    dep = cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name(name))
    return dep["spec"]["template"]["metadata"]["annotations"][naming.HASH_ANNOTATION]


def _create(cluster: Cluster, ns: str, name: str, **spec) -> dict:
    cluster.kube.create(CONFIGMAPS, ns, model_configmap(ns))
    return cluster.kube.create(SPAMPOLICIES, ns, example_policy(ns, name, **spec))


def _set_policy(cluster: Cluster, ns: str, name: str, policy: dict) -> None:
    # A merge patch replaces lists whole; send the complete policy like `kubectl apply`.
    cluster.kube.merge_patch(SPAMPOLICIES, ns, name, {"spec": {"policy": policy}})


def test_create_renders_every_child_and_reports_ready(cluster: Cluster,
                                                      operator: OperatorProcess,
                                                      tmp_path: Path) -> None:
    ns, name = "create", "mail"
    created = _create(cluster, ns, name)
    body = _ready(cluster, ns, name)
    status = body["status"]
    live = status["policyHash"]
    uid = created["metadata"]["uid"]

    # The policy ConfigMap: named by hash, immutable, loadable by the filter server with
    # the same hash, and carrying the model from the referenced ConfigMap.
    cm = cluster.kube.get(CONFIGMAPS, ns, naming.configmap_name(name, live))
    assert cm["immutable"] is True
    assert base64.b64decode(cm["binaryData"]["model.json.gz"]) == b"model-bytes"
    (tmp_path / POLICY_FILE).write_text(cm["data"][POLICY_FILE])
    (tmp_path / "model.json.gz").write_bytes(b"model-bytes")
    assert load_policy_dir(tmp_path).hash == live

    dep = cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name(name))
    assert dep["spec"]["template"]["metadata"]["annotations"][naming.HASH_ANNOTATION] == live
    assert dep["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    assert dep["spec"]["replicas"] == 2
    children = [cm, dep,
                cluster.kube.get(SERVICES, ns, naming.workload_name(name)),
                cluster.kube.get(SERVICES, ns, naming.headless_name(name)),
                cluster.kube.get(HPAS, ns, naming.workload_name(name)),
                cluster.kube.get(PDBS, ns, naming.workload_name(name))]
    for child in children:
        assert child is not None
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
            ("SpamPolicy", name, uid, True)

    assert status["observedGeneration"] == body["metadata"]["generation"]
    assert status["readyReplicas"] == status["updatedReplicas"] == 2
    assert status["desiredPolicyHash"] == live
    assert status["policyConfigMap"] == cm["metadata"]["name"]
    assert status["lastPropagationSeconds"] >= 0
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Ready": ("True", "PolicyLive"),
                          "Progressing": ("False", "RolloutComplete"),
                          "PolicyValid": ("True", "Valid"),
                          "Degraded": ("False", "AsExpected"),
                          "ApplyFailed": ("False", "Applied"),
                          "ScalingActive": ("Unknown", "NotReported"),
                          "AbleToScale": ("Unknown", "NotReported")}
    # Events are posted right after the status write: wait for them too.
    wait_for(lambda: {"ReadyPolicyLive", "PolicyValidValid"} <= {
        e["reason"] for e in cluster.kube.list(EVENTS, ns)}, 30, "the Events")
    assert operator.metric("mailwarden_operator_policy_propagation_seconds_count") >= 1


def test_update_rolls_a_new_configmap_and_prunes_old_ones(cluster: Cluster,
                                                          operator: OperatorProcess) -> None:
    ns, name = "update", "mail"
    _create(cluster, ns, name)
    first = _ready(cluster, ns, name)["status"]["policyHash"]
    hashes = [first]
    policy = example_policy(ns, name)["spec"]["policy"]
    # Three valid changes whatever the example's fitted thresholds: tag moves down.
    base = policy["thresholds"]["tag"]
    for tag in (round(base - 0.1, 2), round(base - 0.2, 2), round(base - 0.3, 2)):
        policy["thresholds"]["tag"] = tag
        _set_policy(cluster, ns, name, policy)
        body = wait_for(lambda: (lambda b: b if b["status"].get("policyHash") not in hashes
                                 and condition(b, "Ready")["status"] == "True" else None)(
            cluster.kube.get(SPAMPOLICIES, ns, name)), 60, f"policy with tag={tag} live")
        new = body["status"]["policyHash"]
        assert _template_hash(cluster, ns, name) == new
        hashes.append(new)
    # After the last rollout: the live ConfigMap and the two before it remain.
    wait_for(lambda: len(_policy_configmaps(cluster, ns, name)) == 3, 30,
             "old ConfigMaps pruned")
    kept = {cm["metadata"]["name"] for cm in _policy_configmaps(cluster, ns, name)}
    assert kept == {naming.configmap_name(name, h) for h in hashes[-3:]}
    assert body["status"]["recentPolicyHashes"][:4] == list(reversed(hashes))


def test_invalid_policy_keeps_the_last_good_one_serving(cluster: Cluster,
                                                        operator: OperatorProcess) -> None:
    ns, name = "invalid", "mail"
    _create(cluster, ns, name)
    good = _ready(cluster, ns, name)["status"]["policyHash"]
    policy = example_policy(ns, name)["spec"]["policy"]
    policy["rules"][0]["pattern"] = "(unclosed"
    policy["metaRules"][0]["expression"] = "NO_SUCH_RULE && BODY_UNSUB_REMOVE"
    _set_policy(cluster, ns, name, policy)

    def rejected():
        body = cluster.kube.get(SPAMPOLICIES, ns, name)
        valid = condition(body, "PolicyValid")
        return body if valid and valid["status"] == "False" else None
    body = wait_for(rejected, 60, "PolicyValid=False")
    valid = condition(body, "PolicyValid")
    assert valid["reason"] == "InvalidPolicy"
    assert "rules[0].pattern" in valid["message"]
    assert "NO_SUCH_RULE" in valid["message"]
    assert condition(body, "Ready")["status"] == "True"     # the last good one serves
    degraded = condition(body, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "LastGoodPolicyServing")
    assert body["status"]["policyHash"] == good
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    assert _template_hash(cluster, ns, name) == good
    assert [cm["metadata"]["name"] for cm in _policy_configmaps(cluster, ns, name)] == \
        [naming.configmap_name(name, good)]
    wait_for(lambda: any(e["type"] == "Warning" and e["reason"] == "PolicyValidInvalidPolicy"
                         for e in cluster.kube.list(EVENTS, ns)), 30, "the Warning Event")

    # Fixing it rolls out the fixed policy.
    policy["rules"][0]["pattern"] = "(closed)"
    policy["metaRules"][0]["expression"] = "BODY_UNSUB_REMOVE"
    _set_policy(cluster, ns, name, policy)
    body = wait_for(lambda: (lambda b: b if b["status"].get("policyHash") not in (None, good)
                             and condition(b, "Ready")["status"] == "True" else None)(
        cluster.kube.get(SPAMPOLICIES, ns, name)), 60, "fixed policy live")
    assert condition(body, "PolicyValid")["status"] == "True"
    assert condition(body, "Degraded")["status"] == "False"


def test_missing_model_configmap_is_reported_then_picked_up(cluster: Cluster,
                                                            operator: OperatorProcess) -> None:
    ns, name = "model", "mail"
    cluster.kube.create(SPAMPOLICIES, ns, example_policy(ns, name))

    def model_missing():
        valid = condition(cluster.kube.get(SPAMPOLICIES, ns, name), "PolicyValid")
        return valid if valid and valid["reason"] == "ModelNotFound" else None
    valid = wait_for(model_missing, 60, "PolicyValid=False/ModelNotFound")
    assert "mailwarden-model" in valid["message"]
    assert cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name(name)) is None
    # The resync timer notices the ConfigMap once it exists.
    cluster.kube.create(CONFIGMAPS, ns, model_configmap(ns, b"late model"))
    body = _ready(cluster, ns, name)
    cm = cluster.kube.get(CONFIGMAPS, ns, naming.configmap_name(name, body["status"]["policyHash"]))
    assert base64.b64decode(cm["binaryData"]["model.json.gz"]) == b"late model"


def test_a_no_op_reconcile_writes_nothing(cluster: Cluster, operator: OperatorProcess) -> None:
    ns, name = "idle", "mail"
    _create(cluster, ns, name)
    _ready(cluster, ns, name)
    time.sleep(2)  # let the echo of the last status write settle
    policies = len(cluster.kube.list(SPAMPOLICIES, None))
    before_writes = len(cluster.writes())
    before = operator.metric("mailwarden_operator_reconciles_total", trigger="resync")
    # Two full resync rounds over every SpamPolicy, however long the machine takes.
    wait_for(lambda: operator.metric("mailwarden_operator_reconciles_total",
                                     trigger="resync") - before >= 2 * policies,
             90, "two resync rounds")
    writes = cluster.writes()[before_writes:]
    assert writes == [], f"a no-op reconcile wrote: {writes}"


def test_drift_is_corrected(cluster: Cluster, operator: OperatorProcess) -> None:
    ns, name = "drift", "mail"
    _create(cluster, ns, name)
    _ready(cluster, ns, name)
    cluster.kube.merge_patch(PDBS, ns, naming.workload_name(name),
                             {"spec": {"maxUnavailable": 5}})
    wait_for(lambda: cluster.kube.get(PDBS, ns, naming.workload_name(name))["spec"]
             ["maxUnavailable"] == 1, 30, "PDB restored")


def test_delete_leaves_children_to_garbage_collection(cluster: Cluster,
                                                      operator: OperatorProcess) -> None:
    ns, name = "delete", "mail"
    created = _create(cluster, ns, name)
    _ready(cluster, ns, name)
    cluster.kube.delete(SPAMPOLICIES, ns, name)
    # No finalizer: the object is gone at once; children point at it for the collector.
    assert cluster.kube.get(SPAMPOLICIES, ns, name) is None
    time.sleep(2)
    mark = len(cluster.writes())
    time.sleep(3)
    assert [w for w in cluster.writes()[mark:] if f"/namespaces/{ns}/" in w] == []
    dep = cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name(name))
    assert dep["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert dep["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True


def _review(port: int, spec: dict, name: str = "mail", *, scheme: str = "http",
            context=None) -> dict:
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "1f1e", "kind": {"group": common_naming.GROUP, "version": common_naming.VERSION,
                                "kind": naming.KIND},
        "resource": {"group": common_naming.GROUP, "version": common_naming.VERSION,
                     "resource": naming.PLURAL},
        "operation": "CREATE", "name": name, "namespace": "web",
        "userInfo": {"username": "tester"},
        "object": {"apiVersion": common_naming.API_VERSION, "kind": naming.KIND,
                   "metadata": {"name": name, "namespace": "web"}, "spec": spec}}}
    request = urllib.request.Request(
        f"{scheme}://127.0.0.1:{port}/validate-spampolicy", data=json.dumps(review).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10, context=context) as rsp:
        return json.loads(rsp.read())["response"]


def test_webhook_rejects_invalid_policies_with_the_validators_messages(
        operator: OperatorProcess) -> None:
    spec = example_policy("web", "mail")["spec"]
    answer = wait_for(lambda: _review(operator.webhook_port, spec), 30, "the webhook")
    assert answer["allowed"] is True
    spec["policy"]["rules"][1]["pattern"] = "(a"
    spec["policy"]["thresholds"] = {"tag": 9, "quarantine": 3, "reject": 20}
    spec["replicas"] = {"min": 5, "max": 2}
    answer = _review(operator.webhook_port, spec)
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert "spec.policy.rules[1].pattern" in message
    assert "tag <= quarantine <= reject" in message
    assert "replicas.min (5) must not exceed replicas.max (2)" in message
    assert answer["status"]["code"] == 422


def test_webhook_serves_tls_from_the_certificate_directory(cluster: Cluster,
                                                         tmp_path: Path) -> None:
    """The chart's layout: tls.crt and tls.key from a Secret (cert-manager or the chart)."""
    import ssl
    import subprocess
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp_path / "tls.key"), "-out", str(tmp_path / "tls.crt")],
                   check=True, capture_output=True)
    proc = OperatorProcess(cluster, tmp_path, "--standalone", name="tls-webhook",
                           webhook_cert_dir=tmp_path)
    try:
        proc.start()
        context = ssl.create_default_context(cafile=str(tmp_path / "tls.crt"))
        spec = example_policy("web", "mail")["spec"]
        spec["policy"]["rules"][0]["pattern"] = "(a"
        answer = wait_for(lambda: _review(proc.webhook_port, spec, scheme="https",
                                          context=context), 30, "the TLS webhook")
        assert answer["allowed"] is False
        assert "spec.policy.rules[0].pattern" in answer["status"]["message"]
    finally:
        proc.stop()
