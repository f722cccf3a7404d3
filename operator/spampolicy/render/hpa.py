"""The autoscaling/v2 HorizontalPodAutoscaler: fast up for surges, slow down."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.render import hpa_behavior
from mailwarden_operator.spampolicy import naming


def render_hpa(owner: dict[str, Any], custom_metrics: bool = True) -> dict[str, Any]:
    """`custom_metrics`: whether the cluster serves custom.metrics.k8s.io. Without it the
    requests/s target is left out: a metric the HPA cannot read keeps it from ever scaling
    down (it scales on the others, up only), so CPU alone is the better autoscaler."""
    spec = owner["spec"]
    name = owner["metadata"]["name"]
    scaling = spec["autoscaling"]
    metrics: list[dict[str, Any]] = [{
        "type": "Resource",
        "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": scaling["cpuUtilization"]}},
    }]
    rps = scaling.get("requestsPerSecond")
    if rps and custom_metrics:
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
            "behavior": hpa_behavior(scaling["scaleDownStabilizationSeconds"]),
        },
    }
