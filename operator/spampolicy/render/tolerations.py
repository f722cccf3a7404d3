"""Tolerations of the filter pods: how long they stay bound to a node that stopped reporting.

When a node stops reporting, the node-lifecycle controller marks it NotReady after its
`--node-monitor-grace-period` (40-50 s by default) and taints it
`node.kubernetes.io/unreachable` (or `not-ready`) with effect NoExecute. Its pods already
left the Service's endpoints (the controller marks them not ready), but the ReplicaSet only
replaces them once the taint evicts them: after the pod's `tolerationSeconds` for that
taint, which the DefaultTolerationSeconds admission plugin sets to 300 s when the pod names
none. The filter pods hold no state and a new one serves within seconds, so five minutes at
reduced capacity buys nothing: the operator renders a short toleration instead.
It is short, not zero, so that a node that misses a few heartbeats (an API server restart,
a brief partition) does not lose every pod at once.
"""

from __future__ import annotations

from typing import Any

# Seconds a filter pod stays bound to a NotReady/unreachable node before it is evicted
# and replaced elsewhere (measured in e2e/test_65_node_loss.py; docs/fault.md).
NODE_FAILURE_TOLERATION_SECONDS = 10
NODE_FAILURE_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _tolerates(toleration: dict[str, Any], key: str) -> bool:
    """Whether `toleration` matches a NoExecute taint `key` (the scheduler's rules: an empty
    key with Exists matches every key, an empty effect every effect)."""
    if toleration.get("effect") not in (None, "", "NoExecute"):
        return False
    if not toleration.get("key"):
        return toleration.get("operator") == "Exists"
    return toleration["key"] == key


def pod_tolerations(user: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The user's `scheduling.tolerations`, followed by the node-failure tolerations for
    each taint the user's do not already cover. A user toleration for one of these taints
    wins (the taint manager would otherwise apply the shorter of the two), so a policy can
    still ask for a longer wait, or for none."""
    tolerations = [dict(t) for t in user or []]
    for key in NODE_FAILURE_TAINTS:
        if not any(_tolerates(t, key) for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": NODE_FAILURE_TOLERATION_SECONDS})
    return tolerations
