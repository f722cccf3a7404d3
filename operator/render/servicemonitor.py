"""A Prometheus Operator ServiceMonitor for the filter pods' metrics port."""

from __future__ import annotations

from typing import Any

from mailwarden_operator import naming

GROUP = "monitoring.coreos.com"
VERSION = "v1"


def wanted(owner: dict[str, Any]) -> bool:
    return bool(owner["spec"]["monitoring"]["serviceMonitor"])


def render_servicemonitor(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    monitoring = owner["spec"]["monitoring"]
    metadata = naming.child_metadata(owner, naming.workload_name(name))
    metadata["labels"].update(monitoring.get("labels") or {})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            # Only the ClusterIP Service: selecting the headless one too would scrape twice.
            "selector": {"matchLabels": {**naming.selector_labels(name),
                                         naming.SERVICE_ROLE_LABEL: "main"}},
            "namespaceSelector": {"matchNames": [owner["metadata"]["namespace"]]},
            "endpoints": [{"port": "metrics", "interval": monitoring["interval"],
                           "path": "/metrics"}],
        },
    }
