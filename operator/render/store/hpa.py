"""The store's autoscaling/v2 HorizontalPodAutoscaler (PostgreSQL storage only: an embedded
store is one pod by design)."""

from __future__ import annotations

from typing import Any

from mailwarden_operator import store_naming
from mailwarden_operator.render.hpa import behavior


def render_store_hpa(owner: dict[str, Any]) -> dict[str, Any]:
    spec = owner["spec"]
    name = store_naming.workload_name(owner["metadata"]["name"])
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": store_naming.child_metadata(owner, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": spec["replicas"]["min"],
            "maxReplicas": spec["replicas"]["max"],
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization",
                "averageUtilization": spec["autoscaling"]["cpuUtilization"]}}}],
            "behavior": behavior(spec["autoscaling"]["scaleDownStabilizationSeconds"]),
        },
    }
