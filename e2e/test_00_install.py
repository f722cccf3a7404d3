"""`helm install` of charts/mailwarden on a real API server: the CRDs are accepted, the
validating webhook is served over TLS with the chart's generated certificate and called by
the API server, the operator runs under the chart's ServiceAccount token with the chart's
RBAC (a permission it lacks is a 403, as on any cluster), two replicas, one active."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import ssl
from pathlib import Path

import pytest
import yaml

from e2e import chart
from e2e.audit import AuditLog
from e2e.conftest import E2E, example
from e2e.install import CHART, SYSTEM_NAMESPACE
from e2e.jobs import run_job, summaries
from e2e.kube import Kube, condition, wait_for

pytestmark = pytest.mark.timeout(600)

OPERATOR_USER = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{chart.SERVICE_ACCOUNT}"
# Run in a client pod: a TLS handshake with the webhook Service, verified as the API server
# verifies it (the caBundle of the webhook configuration, the Service's DNS name).
HANDSHAKE = """
import hashlib, json, socket, ssl, sys
host, ca = sys.argv[1], sys.argv[2]
context = ssl.create_default_context(cadata=ca)
with socket.create_connection((host, 443), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        print("E2E-SUMMARY " + json.dumps({"sha256": hashlib.sha256(der).hexdigest(),
                                           "version": tls.version()}))
"""


def test_the_crds_are_accepted_by_the_api_server(e2e: E2E) -> None:
    print(f"helm install took {e2e.installed.seconds:.1f} s")
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        live = e2e.kube.json("get", "crd", crd["metadata"]["name"], namespaced=False)
        for kind in ("NamesAccepted", "Established"):
            cond = condition(live, kind)
            assert cond and cond["status"] == "True", f"{path.name}: {kind} {cond}"
        assert [(v["name"], v["served"], v["storage"]) for v in live["spec"]["versions"]] == \
            [(v["name"], v["served"], v["storage"]) for v in crd["spec"]["versions"]], path.name
        # What the API server stores is the schema as written (nothing dropped or refused).
        for mine, theirs in zip(crd["spec"]["versions"], live["spec"]["versions"]):
            assert theirs["schema"] == mine["schema"], f"{path.name}: schema differs"


def _webhook_ca(kube: Kube) -> str:
    config = kube.json("get", "validatingwebhookconfiguration", chart.WEBHOOK_CONFIGURATION,
                       namespaced=False)
    (hook,) = config["webhooks"]
    service = hook["clientConfig"]["service"]
    assert (service["namespace"], service["name"]) == (SYSTEM_NAMESPACE, chart.WEBHOOK_SERVICE)
    return base64.b64decode(hook["clientConfig"]["caBundle"]).decode()


def test_the_webhook_serves_the_charts_certificate_over_tls(e2e: E2E) -> None:
    ca = _webhook_ca(e2e.kube)
    secret = chart.system(e2e.kube).json("get", "secret", chart.WEBHOOK_SECRET)
    # The chart generated the CA and the serving certificate (no cert-manager here).
    assert base64.b64decode(secret["data"]["ca.crt"]).decode() == ca
    served_pem = base64.b64decode(secret["data"]["tls.crt"]).decode()
    expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(served_pem)).hexdigest()
    host = f"{chart.WEBHOOK_SERVICE}.{SYSTEM_NAMESPACE}.svc"
    output = run_job(e2e.kube, e2e.image, "webhook-tls", ["python", "-c", HANDSHAKE, host, ca])
    (result,) = summaries(output)
    print(f"{host}:443 answered {result['version']} with the chart's certificate "
          f"{result['sha256'][:16]}…")
    assert result["sha256"] == expected


def _reviews(kube: Kube) -> float:
    return sum(chart.operator_metric(kube, "mailwarden_operator_webhook_reviews_total",
                                     allowed="true").values())


def test_the_api_server_calls_the_webhook(e2e: E2E) -> None:
    """A server-side dry run of a SpamPolicy goes through the API server's admission, which
    calls the webhook (TLS verified against the caBundle): the operator counts the review."""
    doc = copy.deepcopy(example("spampolicy.yaml"))
    doc["metadata"] = {"name": "e2e-webhook-probe"}
    before = _reviews(e2e.kube)
    result = e2e.kube.apply(yaml.safe_dump(doc), "--dry-run=server")
    print(result.stdout.strip())
    after = wait_for(lambda: (lambda n: n if n > before else None)(_reviews(e2e.kube)), 30,
                     "the webhook to count a review")
    assert after >= before + 1
    assert e2e.kube.get("spampolicy", "e2e-webhook-probe") is None  # a dry run


def _token_kubeconfig(kube: Kube, token: str, path: Path) -> Kube:
    """A kubeconfig with only the bearer token: the request is authorized as its account."""
    admin = json.loads(kube.run("config", "view", "--raw", "--minify", "--flatten", "-o", "json",
                                namespaced=False).stdout)
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": admin["clusters"][0]["name"],
                                                      "user": "operator"}}],
        "current-context": "operator"}))
    path.chmod(0o600)
    return Kube(str(path), kube.namespace, kube.path)


def test_the_operator_runs_under_the_charts_service_account_and_rbac(
        e2e: E2E, tmp_path: Path) -> None:
    pods = chart.operator_pods(e2e.kube)
    assert pods, "no ready operator pod"
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == chart.SERVICE_ACCOUNT
        assert pod["spec"].get("automountServiceAccountToken") is not False
        logs = chart.system(e2e.kube).run("logs", pod["metadata"]["name"]).stdout
        assert " 403" not in logs and "Forbidden" not in logs, logs[-3000:]

    audit = AuditLog(e2e.cluster.audit_log) if e2e.cluster.audit_log else None
    before_probe = audit.mark() if audit else 0
    # The same account's token, from outside: what the chart's RBAC grants works, what it
    # does not grant is refused by the API server with 403.
    token = chart.system(e2e.kube).run("create", "token", chart.SERVICE_ACCOUNT,
                                       "--duration=10m").stdout.strip()
    operator = _token_kubeconfig(e2e.kube, token, tmp_path / "operator.kubeconfig")
    operator.run("get", "spampolicies", "--all-namespaces", namespaced=False)
    operator.run("get", "deployments")
    forbidden = {
        "list secrets": operator.run("get", "secrets", check=False),
        "delete a Deployment": operator.run("delete", "deployment", e2e.workload,
                                            "--dry-run=server", check=False),
        "delete a SpamPolicy": operator.run("delete", "spampolicy", e2e.policy,
                                            "--dry-run=server", check=False),
    }
    for what, result in forbidden.items():
        assert result.returncode != 0 and "Forbidden" in result.stderr, (what, result.stderr)
        assert OPERATOR_USER in result.stderr, result.stderr
    print("as the operator's account: " + "; ".join(
        f"{what}: {r.stderr.strip().splitlines()[-1][:90]}" for what, r in forbidden.items()))

    if audit is not None:
        writes = [e for e in audit.writes(until=before_probe) if e.user == OPERATOR_USER]
        ours = {p["metadata"]["name"] for p in chart.operator_pods(e2e.kube, ready_only=False)}
        assert writes, "the audit log shows no write by the operator's account"
        # Every write of the operator came with a token bound to one of its pods, and none
        # was refused.
        assert {e.pod_name for e in writes} <= ours, {e.pod_name for e in writes}
        refused = [str(e) for e in writes if e.code == 403]
        assert not refused, refused
        print(f"audit: {len(writes)} writes by {OPERATOR_USER}, none refused")


def test_two_operator_replicas_one_active(e2e: E2E) -> None:
    deployment = chart.system(e2e.kube).json("get", "deployment", f"{chart.SERVICE_ACCOUNT}"
                                             "-operator")
    assert deployment["spec"]["replicas"] == 2
    pods = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(
        chart.operator_pods(e2e.kube)), 120, "two ready operator pods")
    names = sorted(p["metadata"]["name"] for p in pods)
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, "both replicas on one node"

    peering = e2e.kube.json("get", "clusterkopfpeering", chart.PEERING, namespaced=False)
    peers = sorted(key.split("/")[0] for key in (peering.get("status") or {}))
    assert peers == names, f"peering {chart.PEERING} lists {peers}, pods are {names}"

    # The examples were applied: the active replica wrote their children; the standby wrote
    # nothing (kopf's peering keeps it paused).
    writes = chart.operator_metric(e2e.kube, "mailwarden_operator_api_writes_total")
    active = [name for name, count in writes.items() if count > 0]
    print(f"API writes per operator replica: {writes}")
    assert len(active) == 1, writes
    if e2e.cluster.audit_log is not None:
        # (kubectl: the probes of the account's RBAC above, with a token of no pod)
        writers = {e.pod_name for e in AuditLog(e2e.cluster.audit_log).writes()
                   if e.user == OPERATOR_USER and "kopfpeerings" not in e.resource
                   and not e.user_agent.startswith("kubectl")}
        assert writers == set(active), f"audit: writes from {writers}, metrics say {active}"

