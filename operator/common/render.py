"""Operator-wide render settings and the child objects both kinds build the same way.

The builders take what differs between the kinds (metadata, pod selector, spec values) as
plain arguments; each kind's `render/` module decides those and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The non-root user of the image (see Dockerfile); every pod runs as it.
RUN_AS_USER = 65532
MONITORING_GROUP = "monitoring.coreos.com"
MONITORING_VERSION = "v1"


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide settings the renderers need."""
    default_image: str = "ghcr.io/mailwarden/mailwarden:0.1.0"


def hpa_behavior(scale_down_stabilization_seconds: int) -> dict[str, Any]:
    """HorizontalPodAutoscaler scaling behaviour shared by filter and store pods."""
    return {
        # Surges: react at once, double (or add 4 pods) every 15 seconds.
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [
                        {"type": "Percent", "value": 100, "periodSeconds": 15},
                        {"type": "Pods", "value": 4, "periodSeconds": 15}]},
        # Calm: wait for a stable low, then shed at most 10% a minute.
        "scaleDown": {"stabilizationWindowSeconds": scale_down_stabilization_seconds,
                      "selectPolicy": "Min",
                      "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]},
    }


def pod_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """The pod spec fields of spec.imagePullSecrets and spec.serviceAccountName (only those
    set, so server-side apply releases a field the user removes)."""
    out: dict[str, Any] = {}
    if spec.get("imagePullSecrets"):
        out["imagePullSecrets"] = [{"name": s["name"]} for s in spec["imagePullSecrets"]]
    if spec.get("serviceAccountName"):
        out["serviceAccountName"] = spec["serviceAccountName"]
        # The API server copies serviceAccountName into the deprecated serviceAccount and,
        # reading an object back, copies serviceAccount into an empty serviceAccountName:
        # unless we own (and so can drop) both, a removed account stays forever.
        out["serviceAccount"] = spec["serviceAccountName"]
    return out


def pod_disruption_budget(metadata: dict[str, Any], selector: dict[str, str],
                          max_unavailable: int | str) -> dict[str, Any]:
    """A policy/v1 PodDisruptionBudget over the pods `selector` matches."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata,
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": {"matchLabels": selector},
            # A crash-looping pod, or one that cannot reach its database, must not block
            # node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def servicemonitor_wanted(owner: dict[str, Any]) -> bool:
    return bool(owner["spec"]["monitoring"]["serviceMonitor"])


def service_monitor(owner: dict[str, Any], metadata: dict[str, Any],
                    selector: dict[str, str]) -> dict[str, Any]:
    """A Prometheus Operator ServiceMonitor scraping the `metrics` port of the Services
    `selector` matches, as `owner`'s `spec.monitoring` says (its labels join `metadata`'s)."""
    monitoring = owner["spec"]["monitoring"]
    metadata["labels"].update(monitoring.get("labels") or {})
    return {
        "apiVersion": f"{MONITORING_GROUP}/{MONITORING_VERSION}",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector},
            "namespaceSelector": {"matchNames": [owner["metadata"]["namespace"]]},
            "endpoints": [{"port": "metrics", "interval": monitoring["interval"],
                           "path": "/metrics"}],
        },
    }
