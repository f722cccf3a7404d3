"""A Prometheus Operator ServiceMonitor for the metrics port of a SpamPolicy's filter pods or
an UnsubscribeStore's pods (`names` is the naming module of the owner's kind)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mailwarden_operator import naming

GROUP = "monitoring.coreos.com"
VERSION = "v1"


def wanted(owner: dict[str, Any]) -> bool:
    return bool(owner["spec"]["monitoring"]["serviceMonitor"])


def render_servicemonitor(owner: dict[str, Any], names: ModuleType = naming) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    monitoring = owner["spec"]["monitoring"]
    metadata = names.child_metadata(owner, names.workload_name(name))
    metadata["labels"].update(monitoring.get("labels") or {})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            # Only the Service that carries the metrics port once: the filter's headless
            # Service would be scraped twice, the store's HTTP Service has no metrics port.
            "selector": {"matchLabels": {**names.selector_labels(name),
                                         names.SERVICE_ROLE_LABEL: "main"}},
            "namespaceSelector": {"matchNames": [owner["metadata"]["namespace"]]},
            "endpoints": [{"port": "metrics", "interval": monitoring["interval"],
                           "path": "/metrics"}],
        },
    }
