"""The store's policy/v1 PodDisruptionBudget (PostgreSQL storage only)."""

from __future__ import annotations

from typing import Any

from mailwarden_operator import store_naming


def render_store_pdb(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": store_naming.child_metadata(owner, store_naming.workload_name(name)),
        "spec": {
            "maxUnavailable": owner["spec"]["disruption"]["maxUnavailable"],
            "selector": {"matchLabels": store_naming.selector_labels(name)},
            # A pod that cannot reach its database must not block node drains.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
