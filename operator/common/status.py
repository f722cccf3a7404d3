"""What both kinds' statuses are made of: the rollout of a Deployment as `kubectl rollout
status` sees it, conditions per the Kubernetes API conventions (`type`, `status`, `reason`,
`message`, `lastTransitionTime` that moves only when `status` flips, `observedGeneration`),
the transitions to post as Events, and the status patch (only what changed)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Rollout:
    """What the Deployment says about getting `target_hash` onto every replica."""
    target_hash: str | None
    complete: bool
    desired: int = 0
    replicas: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0


def observe_rollout(deployment: dict[str, Any] | None, target_hash: str | None,
                    hash_annotation: str) -> Rollout:
    """Like `kubectl rollout status`: complete once the controller has seen the current
    template and every replica is updated and available, with no old ones left."""
    if deployment is None or target_hash is None:
        return Rollout(target_hash, False)
    meta = deployment.get("metadata", {})
    spec = deployment.get("spec", {})
    st = deployment.get("status") or {}
    template_hash = (spec.get("template", {}).get("metadata", {}).get("annotations") or {}
                     ).get(hash_annotation)
    generation = meta.get("generation")
    observed = st.get("observedGeneration")
    seen = generation is None or (observed is not None and observed >= generation)
    desired = int(spec.get("replicas", 1))
    replicas = int(st.get("replicas", 0))
    updated = int(st.get("updatedReplicas", 0))
    ready = int(st.get("readyReplicas", 0))
    available = int(st.get("availableReplicas", 0))
    complete = (seen and template_hash == target_hash and desired >= 1
                and updated >= desired and replicas <= updated and available >= updated)
    return Rollout(target_hash, complete, desired, replicas, updated, ready, available)


@dataclass(frozen=True)
class Transition:
    type: str          # Normal | Warning
    reason: str
    message: str


def timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(ts: str | None) -> datetime.datetime | None:
    if not ts:
        return None
    try:
        return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


# Decides whether a condition change is posted as a Warning Event:
# (type, status, reason, the previous condition or None) -> bool
WarningRule = Callable[[str, str, str, "dict[str, Any] | None"], bool]


def build_conditions(previous: dict[str, Any], computed: list[tuple[str, str, str, str]],
                     generation: int | None, now: datetime.datetime,
                     warning: WarningRule) -> tuple[list[dict[str, Any]], list[Transition]]:
    """Conditions per the API conventions (`lastTransitionTime` moves only when `status`
    flips) and the transitions to post as Events (a change of status or reason)."""
    previous_conditions = {c.get("type"): c for c in previous.get("conditions") or []}
    conditions = []
    transitions = []
    for ctype, cstatus, reason, message in computed:
        before = previous_conditions.get(ctype)
        flipped = before is None or before.get("status") != cstatus
        condition = {
            "type": ctype, "status": cstatus, "reason": reason, "message": message,
            "lastTransitionTime": timestamp(now) if flipped or before is None
            else before.get("lastTransitionTime", timestamp(now)),
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        conditions.append(condition)
        if before is None or flipped or before.get("reason") != reason:
            kind = "Warning" if warning(ctype, cstatus, reason, before) else "Normal"
            transitions.append(Transition(kind, f"{ctype}{reason}"[:128], message))
    return conditions, transitions


def status_patch(previous: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The top-level status fields that differ (empty: nothing to write)."""
    prev = previous or {}
    return {key: value for key, value in new.items() if prev.get(key) != value}
