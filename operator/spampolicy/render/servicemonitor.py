"""The ServiceMonitor of a SpamPolicy's filter pods: it selects only the ClusterIP Service
(role `main`), since the headless Service carries the same metrics port and would be
scraped twice."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.render import service_monitor
from mailwarden_operator.spampolicy import naming


def render_servicemonitor(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return service_monitor(owner, naming.child_metadata(owner, naming.workload_name(name)),
                           {**naming.selector_labels(name), naming.SERVICE_ROLE_LABEL: "main"})
