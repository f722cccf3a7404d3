"""The Helm chart, rendered by the real `helm` binary (scripts/bootstrap.sh installs it in
.cache/bin): lint, every rendered object valid for Kubernetes 1.30 and the newest version,
least-privilege RBAC (sufficiency: tests/operator/test_store_emulated.py checks every request
the operator made against it), restricted pod security, webhook certificates both ways."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator.k8s_schemas import validate_k8s

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailwarden"


def _helm() -> str:
    found = shutil.which("helm") or (REPO / ".cache" / "bin" / "helm")
    if not Path(found).is_file():
        pytest.fail("helm not found: run scripts/bootstrap.sh (it installs .cache/bin/helm)")
    return str(found)


def render(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run([_helm(), "template", "mw", str(CHART), "-n", "mail-system", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("args", [(), ("--set", "webhook.certManager.enabled=true"),
                                  ("--set", "operator.watchNamespaces={mail,edge}")],
                         ids=["defaults", "cert-manager", "namespaced"])
def test_helm_lint(args: tuple[str, ...]) -> None:
    out = subprocess.run([_helm(), "lint", "--strict", str(CHART), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


VARIANTS = {
    "defaults": (),
    "cert-manager": ("--api-versions", "cert-manager.io/v1",
                     "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"),
    "namespaced": ("--set", "operator.watchNamespaces={mail,edge}",
                   "--set", "webhook.failurePolicy=Ignore"),
    "no-webhook": ("--set", "webhook.enabled=false", "--set", "serviceAccount.create=false"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid_for_kubernetes(variant: str) -> None:
    docs = render(*VARIANTS[variant])
    assert docs
    for doc in docs:
        validate_k8s(doc)


def test_the_operator_runs_two_restricted_replicas_with_probes() -> None:
    dep = by_kind(render(), "Deployment")[0]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = pod["containers"][0]
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert container["command"] == ["mailwarden"] and container["args"][0] == "operator"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--webhook-cert-dir=/etc/mailwarden/webhook" in container["args"]
    assert "--filter-image=ghcr.io/mailwarden/mailwarden:0.1.0" in container["args"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp",
                                                                   "/etc/mailwarden/webhook"}
    assert container["image"] == "ghcr.io/mailwarden/mailwarden:0.1.0"
    assert by_kind(render(), "PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1
    peering = by_kind(render(), "ClusterKopfPeering")[0]
    assert peering["metadata"]["name"] == "mailwarden"


def test_the_operators_command_line_is_what_mailwarden_operator_accepts() -> None:
    from mailwarden.cli import build_parser

    container = by_kind(render("--set", "operator.watchNamespaces={mail}"),
                        "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])
    assert args.namespaces == ["mail"]
    assert args.webhook_cert_dir == Path("/etc/mailwarden/webhook")
    assert args.peering_lifetime == 15 and args.resync_seconds == 60
    assert args.informer_cache is True
    container = by_kind(render("--set", "operator.informerCache=false"),
                        "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert build_parser().parse_args(container["args"]).informer_cache is False


def _rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for doc in docs if doc["kind"] in ("ClusterRole", "Role")
            for rule in doc["rules"]]


@pytest.mark.parametrize("variant", ["defaults", "namespaced"])
def test_rbac_is_least_privilege(variant: str) -> None:
    rules = _rules(render(*VARIANTS[variant]))
    assert rules
    granted: dict[str, set[str]] = {}
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {rule}"
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert granted["pods"] == {"get", "list"}  # read-only: suppression freshness of filter pods
    # Secrets: read what store pods mount, create a missing signing key; never enumerate,
    # change or delete one (RBAC cannot restrict create by name; see the template).
    assert granted["secrets"] == {"get", "create"}
    assert granted["persistentvolumeclaims"] == {"get", "create"}
    assert granted["configmaps"] == {"get", "list", "watch", "create", "delete"}
    # The informers' list/watch (operator/common/informer.py); never update or delete.
    for child in ("services", "horizontalpodautoscalers", "poddisruptionbudgets"):
        assert granted[child] == {"get", "list", "watch", "create", "patch"}, child
    assert granted["events"] == {"create"}
    assert granted["spampolicies/status"] == {"get", "patch"}
    assert granted["unsubscribestores/status"] == {"get", "patch"}
    assert granted["unsubscribestores"] == {"get", "list", "watch", "patch"}
    # blockOwnerDeletion under OwnerReferencesPermissionEnforcement (tests/operator_cluster/
    # test_rbac.py shows the 403 without it); the only `update` granted.
    assert granted["spampolicies/finalizers"] == {"update"}
    assert granted["unsubscribestores/finalizers"] == {"update"}
    assert not any({"update", "deletecollection", "escalate", "bind", "impersonate"}
                   & verbs for resource, verbs in granted.items()
                   if not resource.endswith("/finalizers"))


def test_namespaced_mode_grants_nothing_cluster_wide_beyond_discovery() -> None:
    docs = render(*VARIANTS["namespaced"])
    cluster_role = by_kind(docs, "ClusterRole")[0]
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions", "clusterkopfpeerings"}
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["edge", "mail"]
    assert sorted(p["metadata"]["namespace"] for p in by_kind(docs, "KopfPeering")) == \
        ["edge", "mail"]


def test_self_signed_webhook_certificate_verifies_against_the_ca_bundle() -> None:
    docs = render()
    secret = by_kind(docs, "Secret")[0]
    webhook = by_kind(docs, "ValidatingWebhookConfiguration")[0]["webhooks"][0]
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    assert webhook["clientConfig"]["service"]["path"] == "/validate-spampolicy"
    assert webhook["rules"][0]["resources"] == ["spampolicies"]
    assert webhook["sideEffects"] == "None" and webhook["failurePolicy"] == "Fail"
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert = Path(tmp) / "ca.pem", Path(tmp) / "tls.pem"
        ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
        cert.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)],
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        names = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-ext",
                                "subjectAltName"], capture_output=True, text=True).stdout
    assert "mw-mailwarden-webhook.mail-system.svc" in names


def test_cert_manager_issues_the_certificate_when_present() -> None:
    """Issue 13 item 15: the standard chain (self-signed Issuer -> CA Certificate -> CA
    Issuer -> serving Certificate). A self-signed Issuer signing the serving certificate
    directly made every renewal a new CA, and until cainjector caught up the API server
    refused the webhook's certificate (x509: unknown authority)."""
    docs = render(*VARIANTS["cert-manager"])
    assert by_kind(docs, "Secret") == []
    issuers = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "Issuer")}
    certs = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "Certificate")}
    assert issuers["mw-mailwarden-selfsigned"] == {"selfSigned": {}}
    ca = certs["mw-mailwarden-webhook-ca"]
    assert ca["isCA"] is True and ca["issuerRef"]["name"] == "mw-mailwarden-selfsigned"
    assert issuers["mw-mailwarden-webhook-ca"] == {"ca": {"secretName": ca["secretName"]}}
    serving = certs["mw-mailwarden-webhook"]
    assert serving["secretName"] == "mw-mailwarden-webhook-tls"
    assert serving["issuerRef"] == {"name": "mw-mailwarden-webhook-ca", "kind": "Issuer"}
    assert "isCA" not in serving
    config = by_kind(docs, "ValidatingWebhookConfiguration")[0]
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        "mail-system/mw-mailwarden-webhook"
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]
    assert by_kind(docs, "ServiceMonitor")


EXISTING = ("--set", "webhook.tls.existingSecret=webhook-cert",
            "--set", "webhook.tls.caBundle=" + base64.b64encode(b"-----BEGIN CERT").decode())


@pytest.mark.parametrize("extra", [(), ("--api-versions", "cert-manager.io/v1")],
                         ids=["plain", "cert-manager-installed"])
def test_an_existing_certificate_renders_the_same_every_time(extra: tuple[str, ...]) -> None:
    """Issue 13 item 15 (GitOps): `helm template` cannot look up the Secret it made before,
    so the chart-generated certificate changed on every render; an existing Secret and its
    caBundle make the output stable."""
    def text() -> str:
        out = subprocess.run([_helm(), "template", "mw", str(CHART), "-n", "mail-system",
                              *EXISTING, *extra], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout
    first = text()
    assert text() == first
    docs = [d for d in yaml.safe_load_all(first) if d]
    assert by_kind(docs, "Secret") == [] and by_kind(docs, "Certificate") == []
    webhook = by_kind(docs, "ValidatingWebhookConfiguration")[0]
    assert webhook["webhooks"][0]["clientConfig"]["caBundle"] == EXISTING[3].split("=", 1)[1]
    assert "annotations" not in webhook["metadata"]
    volumes = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["volumes"]
    assert {"secretName": "webhook-cert"} in [v.get("secret") for v in volumes]


def test_an_existing_certificate_needs_its_ca_bundle() -> None:
    out = subprocess.run([_helm(), "template", "mw", str(CHART), *EXISTING[:2]],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "webhook.tls.caBundle is required with webhook.tls.existingSecret" in out.stderr


@pytest.mark.parametrize("setting, message", [
    ("operator.replica=3", "additional properties 'replica' not allowed"),
    ("webhook.failurePolicy=fail", "value must be one of 'Fail', 'Ignore'"),
    ("webhook.certManager.enabled=maybe", "/webhook/certManager/enabled"),
    ("operator.logLevel=verbose", "/operator/logLevel"),
    ("imagePullSecrets[0]=regcred", "/imagePullSecrets/0"),
])
def test_values_schema_refuses_misspelt_keys_and_bad_values(setting: str, message: str) -> None:
    """Issue 13 item 17: values.schema.json; a typo was silently ignored before."""
    out = subprocess.run([_helm(), "template", "mw", str(CHART), "--set", setting],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_chart_ships_the_crds() -> None:
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == \
        sorted(p.name for p in (REPO / "crds").glob("*.yaml"))


def test_every_value_is_documented() -> None:
    """Every key has a comment above it, unless it is a section header (whose keys are
    documented) or lies inside a documented value (e.g. resources.requests.cpu)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_at: list[int] = []  # indents of documented ancestors
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not match:
            continue
        indent = len(match.group(1))
        documented_at = [d for d in documented_at if d < indent]
        if documented_at:
            continue
        if lines[i - 1].strip().startswith("#"):
            documented_at.append(indent)
            continue
        section = match.group(3).strip() == "" and i + 1 < len(lines) and \
            len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent
        assert section, f"values.yaml line {i + 1} ({line.strip()}) has no comment above it"


def test_notes_render() -> None:
    out = subprocess.run([_helm(), "install", "mw", str(CHART), "-n", "mail-system",
                          "--dry-run=client"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kubectl apply -f examples/spampolicy.yaml" in out.stdout
