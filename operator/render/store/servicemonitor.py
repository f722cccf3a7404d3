"""A Prometheus Operator ServiceMonitor for the store pods' metrics port."""

from __future__ import annotations

from typing import Any

from mailwarden_operator import store_naming
from mailwarden_operator.render.servicemonitor import GROUP, VERSION


def wanted(owner: dict[str, Any]) -> bool:
    return bool(owner["spec"]["monitoring"]["serviceMonitor"])


def render_store_servicemonitor(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    monitoring = owner["spec"]["monitoring"]
    metadata = store_naming.child_metadata(owner, store_naming.workload_name(name))
    metadata["labels"].update(monitoring.get("labels") or {})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServiceMonitor",
        "metadata": metadata,
        "spec": {
            # The gRPC Service carries the metrics port; the HTTP one does not.
            "selector": {"matchLabels": {**store_naming.selector_labels(name),
                                         store_naming.SERVICE_ROLE_LABEL: "main"}},
            "namespaceSelector": {"matchNames": [owner["metadata"]["namespace"]]},
            "endpoints": [{"port": "metrics", "interval": monitoring["interval"],
                           "path": "/metrics"}],
        },
    }
