"""The policy/v1 PodDisruptionBudget."""

from __future__ import annotations

from typing import Any

from mailwarden_operator import naming


def render_pdb(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": naming.child_metadata(owner, naming.workload_name(name)),
        "spec": {
            "maxUnavailable": owner["spec"]["disruption"]["maxUnavailable"],
            "selector": {"matchLabels": naming.selector_labels(name)},
            # A crash-looping pod must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
