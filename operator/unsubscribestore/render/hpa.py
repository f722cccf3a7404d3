"""The store's autoscaling/v2 HorizontalPodAutoscaler (PostgreSQL storage only: an embedded
store is one pod by design)."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.render import hpa_behavior
from mailwarden_operator.unsubscribestore import naming


def render_store_hpa(owner: dict[str, Any]) -> dict[str, Any]:
    spec = owner["spec"]
    name = naming.workload_name(owner["metadata"]["name"])
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": naming.child_metadata(owner, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": spec["replicas"]["min"],
            "maxReplicas": spec["replicas"]["max"],
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization",
                "averageUtilization": spec["autoscaling"]["cpuUtilization"]}}}],
            "behavior": hpa_behavior(spec["autoscaling"]["scaleDownStabilizationSeconds"]),
        },
    }
