"""The policy/v1 PodDisruptionBudget of a SpamPolicy's filter pods."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.render import pod_disruption_budget
from mailwarden_operator.spampolicy import naming


def render_pdb(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return pod_disruption_budget(naming.child_metadata(owner, naming.workload_name(name)),
                                 naming.selector_labels(name),
                                 owner["spec"]["disruption"]["maxUnavailable"])
