"""The policy/v1 PodDisruptionBudget of a SpamPolicy's filter pods or an UnsubscribeStore's
pods (`names` is the naming module of the owner's kind)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mailwarden_operator import naming


def render_pdb(owner: dict[str, Any], names: ModuleType = naming) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": names.child_metadata(owner, names.workload_name(name)),
        "spec": {
            "maxUnavailable": owner["spec"]["disruption"]["maxUnavailable"],
            "selector": {"matchLabels": names.selector_labels(name)},
            # A crash-looping pod, or one that cannot reach its database, must not block
            # node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
