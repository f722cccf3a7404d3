"""The chart's release as the suite sees it on the cluster: its objects (from `helm get
manifest`), the operator pods and their metrics (read through the API server's pod proxy,
which works on every provider)."""

from __future__ import annotations

from typing import Any

import yaml

from e2e.install import RELEASE, SYSTEM_NAMESPACE, helm
from e2e.kube import Kube, metric, pod_ready
from e2e.providers import Cluster

OPERATOR_SELECTOR = ("app.kubernetes.io/name=mailwarden-operator,"
                     f"app.kubernetes.io/instance={RELEASE}")
METRICS_PORT = 9100           # values.yaml metrics.port
SERVICE_ACCOUNT = RELEASE     # serviceAccount.name defaults to the release's full name
WEBHOOK_SERVICE = f"{RELEASE}-webhook"
WEBHOOK_SECRET = f"{RELEASE}-webhook-tls"
WEBHOOK_CONFIGURATION = f"{RELEASE}-spampolicies"
PEERING = "mailwarden"        # values.yaml operator.peeringName


def manifest(cluster: Cluster) -> list[dict[str, Any]]:
    """Every object the release rendered (templates; CRDs are separate in Helm)."""
    result = helm(cluster, "get", "manifest", RELEASE, "--namespace", SYSTEM_NAMESPACE)
    assert result.returncode == 0, result.output
    return [doc for doc in yaml.safe_load_all(result.output) if doc]


def object_key(doc: dict[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name); cluster-scoped objects have namespace ''."""
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def system(kube: Kube) -> Kube:
    return kube.with_namespace(SYSTEM_NAMESPACE)


def operator_pods(kube: Kube, ready_only: bool = True) -> list[dict[str, Any]]:
    pods = system(kube).items("pods", "-l", OPERATOR_SELECTOR)
    return [p for p in pods if pod_ready(p)] if ready_only else pods


def operator_metrics(kube: Kube, pod: dict[str, Any]) -> str:
    return kube.raw(f"/api/v1/namespaces/{SYSTEM_NAMESPACE}/pods/"
                    f"{pod['metadata']['name']}:{METRICS_PORT}/proxy/metrics")


def operator_metric(kube: Kube, name: str, **labels: str) -> dict[str, float]:
    """`name` (summed over matching samples) per ready operator pod."""
    return {p["metadata"]["name"]: metric(operator_metrics(kube, p), name, **labels)
            for p in operator_pods(kube)}


def peers(kube: Kube) -> dict[str, dict[str, Any]]:
    """The ClusterKopfPeering's peers: identity -> {priority, lastseen, lifetime}."""
    peering = kube.json("get", "clusterkopfpeering", PEERING, namespaced=False)
    return dict(peering.get("status") or {})


def active_operator(kube: Kube) -> dict[str, Any]:
    """The ready operator pod whose peer has the highest priority (kopf's rule: every
    other peer pauses while a higher-priority one is alive)."""
    pods = {p["metadata"]["name"]: p for p in operator_pods(kube)}
    ranked = sorted(((info.get("priority", 0), ident.split("/")[0])
                     for ident, info in peers(kube).items()
                     if ident.split("/")[0] in pods), reverse=True)
    assert ranked, f"no ready operator pod in the peering ({list(pods)}, {peers(kube)})"
    return pods[ranked[0][1]]
