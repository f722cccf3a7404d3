"""The ServiceMonitor of an UnsubscribeStore's pods: it selects the gRPC Service (role
`main`), the one with the metrics port (the HTTP Service has none)."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.render import service_monitor
from mailwarden_operator.unsubscribestore import naming


def render_store_servicemonitor(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return service_monitor(owner, naming.child_metadata(owner, naming.workload_name(name)),
                           {**naming.selector_labels(name), naming.SERVICE_ROLE_LABEL: "main"})
