"""The policy/v1 PodDisruptionBudget of an UnsubscribeStore's pods (PostgreSQL storage)."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.render import pod_disruption_budget
from mailwarden_operator.unsubscribestore import naming


def render_store_pdb(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return pod_disruption_budget(naming.child_metadata(owner, naming.workload_name(name)),
                                 naming.selector_labels(name),
                                 owner["spec"]["disruption"]["maxUnavailable"])
