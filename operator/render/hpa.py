"""The autoscaling/v2 HorizontalPodAutoscaler: fast up for surges, slow down."""

from __future__ import annotations

from typing import Any

from mailwarden_operator import naming


def render_hpa(owner: dict[str, Any]) -> dict[str, Any]:
    spec = owner["spec"]
    name = owner["metadata"]["name"]
    scaling = spec["autoscaling"]
    metrics: list[dict[str, Any]] = [{
        "type": "Resource",
        "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": scaling["cpuUtilization"]}},
    }]
    rps = scaling.get("requestsPerSecond")
    if rps:
        metrics.append({
            "type": "Pods",
            "pods": {"metric": {"name": rps["metricName"]},
                     "target": {"type": "AverageValue",
                                "averageValue": str(rps["averageValue"])}},
        })
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": naming.child_metadata(owner, naming.workload_name(name)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": naming.workload_name(name)},
            "minReplicas": spec["replicas"]["min"],
            "maxReplicas": spec["replicas"]["max"],
            "metrics": metrics,
            "behavior": behavior(scaling["scaleDownStabilizationSeconds"]),
        },
    }


def behavior(scale_down_stabilization_seconds: int) -> dict[str, Any]:
    """Scaling behaviour shared by filter and store pods."""
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
