"""Helpers of the real-control-plane operator tests: kubectl, waiting, the CRDs."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.cluster import ControlPlane

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60,
             interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def kubectl(cp: ControlPlane, *args: str, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """kubectl (the control plane's own build) as the cluster admin; never raises."""
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True,
                          env=cp.env(), timeout=timeout)


def established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    try:
        found = ext.read_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return any(c.type == "Established" and c.status == "True"
               for c in (found.status.conditions or []))


def install_crds(cp: ControlPlane, directory: Path = CRD_DIR) -> list[str]:
    """Create every CRD of `directory` (as `kubectl create -f` would) and wait until each is
    Established. Raises AssertionError with the API server's message when one is refused."""
    ext = client.ApiextensionsV1Api(cp.api_client())
    names = []
    for path in sorted(directory.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise AssertionError(f"the API server refused {path.name}: {exc.body}") \
                    from None
        names.append(body["metadata"]["name"])
    for name in names:
        wait_for(f"CRD {name} to be Established", lambda n=name: established(ext, n))
    return names


CHART = REPO / "charts" / "mailwarden"
RELEASE = "mw"
RELEASE_NAMESPACE = "mail-system"
# The chart's ServiceAccount for release `mw` in `mail-system`.
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}-mailwarden"


def helm() -> str:
    import shutil
    found = shutil.which("helm") or str(REPO / ".cache" / "bin" / "helm")
    if not Path(found).is_file():
        raise AssertionError("helm not found: run scripts/bootstrap.sh")
    return found


def chart_objects(*args: str) -> list[dict[str, Any]]:
    """`helm template` of the chart as release `mw` in `mail-system`."""
    done = subprocess.run([helm(), "template", RELEASE, str(CHART), "-n", RELEASE_NAMESPACE,
                           *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def create_objects(cp: ControlPlane, docs: list[dict[str, Any]]) -> None:
    """Create (or replace) `docs` as the admin, with `kubectl apply --server-side`."""
    text = yaml.safe_dump_all(docs)
    done = kubectl(cp, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=text)
    assert done.returncode == 0, done.stdout + done.stderr


def ensure_namespace(cp: ControlPlane, name: str) -> None:
    try:
        client.CoreV1Api(cp.api_client()).create_namespace({"metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def chart_rbac(cp: ControlPlane, *args: str) -> str:
    """Install the chart's ServiceAccount and RBAC (and the peering object); returns the
    ServiceAccount's name."""
    ensure_namespace(cp, RELEASE_NAMESPACE)
    kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
             "ClusterKopfPeering", "KopfPeering"}
    docs = [d for d in chart_objects(*args) if d["kind"] in kinds]
    create_objects(cp, docs)
    return next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")


def service_account_kubeconfig(cp: ControlPlane, namespace: str, name: str,
                               path: Path, hours: int = 6) -> Path:
    """A kubeconfig holding a token the API server issued (TokenRequest) to ServiceAccount
    `namespace/name`: a client using it has exactly that account's RBAC."""
    token = client.CoreV1Api(cp.api_client()).create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": hours * 3600}}).status.token
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cp", "cluster": {"server": cp.server,
                                                "certificate-authority": str(cp.ca_cert)}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "cp", "user": name}}],
        "current-context": name,
    }))
    return path
