"""`mailwarden operator` as a host process against the real control plane, under the chart's
ServiceAccount (a TokenRequest token, so RBAC is exactly the chart's), and the API server's
audit log to count what it wrote."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster import ControlPlane
from testkit.processes import ServerProcess, free_port, scraped_total
from tests.operator_cluster.kubeapi import (
    RELEASE_NAMESPACE,
    REPO,
    chart_rbac,
    service_account_kubeconfig,
)

MAILWARDEN = Path(sys.executable).parent / "mailwarden"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


class OperatorOnCluster(ServerProcess):
    """The operator, active (it is the only peer), on ephemeral loopback ports."""

    def __init__(self, cp: ControlPlane, workdir: Path, *extra: str, name: str = "operator",
                 resync: float = 5.0, listen: str = "127.0.0.1") -> None:
        self.cp = cp
        self.account = chart_rbac(cp)
        self.username = f"system:serviceaccount:{RELEASE_NAMESPACE}:{self.account}"
        kubeconfig = service_account_kubeconfig(cp, RELEASE_NAMESPACE, self.account,
                                                workdir / f"{name}.kubeconfig")
        self.listen = listen
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        argv = [str(MAILWARDEN), "operator", "--kubeconfig", str(kubeconfig),
                "--listen-address", listen,
                "--metrics-port", str(self.metrics_port),
                "--liveness-port", str(self.liveness_port),
                "--resync-seconds", str(resync),
                "--filter-image", "mailwarden:e2e", *extra]
        if "--webhook-port" not in extra:
            argv += ["--webhook-port", "0"]
        super().__init__(name, argv, log_path=workdir / f"{name}.log",
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=REPO)

    def start(self) -> "OperatorOnCluster":
        super().start()
        self.wait_until(self.live, what="the operator's liveness endpoint", timeout=90)
        return self

    def _url(self, port: int, path: str) -> str:
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        return f"http://{host}:{port}{path}"

    def live(self) -> bool:
        with urllib.request.urlopen(self._url(self.liveness_port, "/healthz"),
                                    timeout=2) as rsp:
            return rsp.status == 200

    def metric(self, metric_name: str, /, **labels: str) -> float:
        return scraped_total(self._url(self.metrics_port, "/metrics"), metric_name, **labels)

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True)
class AuditEvent:
    verb: str
    user: str
    agent: str
    resource: str        # plural, with "/subresource"
    namespace: str | None
    name: str | None
    code: int
    uri: str

    @property
    def dry_run(self) -> bool:
        return "dryRun=" in self.uri

    def __str__(self) -> str:
        return f"{self.verb} {self.resource} {self.namespace}/{self.name} -> {self.code}"


class AuditLog:
    """The API server's audit log (writes, Metadata level): what a client wrote."""

    def __init__(self, cp: ControlPlane) -> None:
        self.path = cp.logs / "audit.log"

    def events(self) -> list[AuditEvent]:
        out = []
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                raw: dict[str, Any] = json.loads(line)
            except ValueError:
                continue  # a line being written
            ref = raw.get("objectRef") or {}
            resource = ref.get("resource", "")
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            out.append(AuditEvent(
                verb=raw.get("verb", ""), user=(raw.get("user") or {}).get("username", ""),
                agent=raw.get("userAgent", ""), resource=resource,
                namespace=ref.get("namespace"), name=ref.get("name"),
                code=int((raw.get("responseStatus") or {}).get("code", 0)),
                uri=raw.get("requestURI", "")))
        return out

    def mark(self) -> int:
        return len(self.events())

    def requests(self, user: str, since: int = 0) -> list[AuditEvent]:
        """Every request of `user` after `since` (reads only where the audit policy logs
        them: this folder's does for the operator's ServiceAccount)."""
        return [e for e in self.events()[since:] if e.user == user]

    def writes(self, user: str, since: int = 0, *, namespace: str | None = None,
               include_peering: bool = False) -> list[AuditEvent]:
        """Writes `user` made after `since` (a `mark()`): not dry runs, and not kopf's
        peering keep-alive unless asked."""
        return [e for e in self.events()[since:]
                if e.user == user and e.verb in WRITE_VERBS and not e.dry_run
                and (include_peering or "kopfpeerings" not in e.resource)
                and (namespace is None or e.namespace == namespace)]


WEBHOOK_ENDPOINTS = "mailwarden-tests-host"


def install_webhook(cp: ControlPlane, cert_dir: Path, port: int) -> list[dict[str, Any]]:
    """The chart's webhook Service, ValidatingWebhookConfiguration and certificate (one
    `helm template`, so the CA bundle matches), with the Service's endpoint at the control
    plane's host address (an EndpointSlice of our own, as e2e/cluster registers
    metrics-server): the API server calls an operator running on this host. Writes tls.crt
    and tls.key to `cert_dir`; returns the objects created (for `uninstall_webhook`)."""
    import base64

    from tests.operator_cluster.kubeapi import chart_objects, create_objects, ensure_namespace
    ensure_namespace(cp, RELEASE_NAMESPACE)
    docs = chart_objects()
    secret = next(d for d in docs if d["kind"] == "Secret"
                  and d["metadata"]["name"].endswith("-webhook-tls"))
    cert_dir.mkdir(parents=True, exist_ok=True)
    for key in ("tls.crt", "tls.key"):
        (cert_dir / key).write_bytes(base64.b64decode(secret["data"][key]))
    service = next(d for d in docs if d["kind"] == "Service"
                   and d["metadata"]["name"].endswith("-webhook"))
    config = next(d for d in docs if d["kind"] == "ValidatingWebhookConfiguration")
    meta = service["metadata"]
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": WEBHOOK_ENDPOINTS, "namespace": meta["namespace"],
                     "labels": {"kubernetes.io/service-name": meta["name"],
                                "endpointslice.kubernetes.io/managed-by": "mailwarden-tests"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [cp.host_ip], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}
    created = [service, endpoints, config]
    create_objects(cp, created)
    return created


def uninstall_webhook(cp: ControlPlane, created: list[dict[str, Any]]) -> None:
    import yaml

    from tests.operator_cluster.kubeapi import kubectl
    kubectl(cp, "delete", "--ignore-not-found", "-f", "-",
            stdin=yaml.safe_dump_all(list(reversed(created))))
