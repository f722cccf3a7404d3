"""Status of a SpamPolicy, computed as a pure function of what a reconcile observed.

Conditions follow the Kubernetes API conventions: `type`, `status`, `reason` (CamelCase),
`message`, `lastTransitionTime` (changes only when `status` flips) and
`observedGeneration`.

- PolicyValid — the newest spec.policy validated (False: reason says why; nothing rolls).
- Progressing — True while a policy or serving change rolls out.
- Ready — True when the desired policy is live on every replica and pods are available
  (during a rollout the previous policy keeps serving at full capacity, Ready is False).
- Degraded — True when something needs attention: an invalid policy left the last good one
  serving, fewer pods are available than `replicas.min`, or filter pods answer with stale
  suppressions (SuppressionStale).
- SuppressionFresh — only with `unsubscribeStoreRef`: whether the filter pods' suppression
  answers are current (suppression_health.py reads it from the pods).
- SuppressionReady — only with `unsubscribeStoreRef`: whether the referenced UnsubscribeStore
  exists and is Ready. Informational: classification never waits for it.
- ScalingActive, AbleToScale — the HorizontalPodAutoscaler's own conditions (False: with its
  reason and message; True: a fixed message, since the HPA rewrites it with every
  recommendation): an autoscaler that cannot read its metrics stops scaling silently.
- ApplyFailed — True when the API server refused a child write (the message is the API's);
  writes pause with back-off (common/backoff.py) and Degraded says ApplyFailed.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from mailwarden_operator.common.backoff import ApplyFailure, apply_condition, quiet_transitions
from mailwarden_operator.common.status import (
    Rollout,
    Transition,
    build_conditions,
    parse_timestamp,
    timestamp,
)

MAX_RECENT_HASHES = 10


@dataclass(frozen=True)
class Observation:
    generation: int | None
    min_replicas: int
    bundle_hash: str | None           # the valid desired policy, or None when rejected
    rule_count: int = 0
    rejection_reason: str | None = None
    rejection_message: str | None = None
    rollout: Rollout = field(default_factory=lambda: Rollout(None, False))
    # The SuppressionReady condition (type, status, reason, message) when the SpamPolicy
    # references an UnsubscribeStore, and the store's gRPC address.
    suppression: tuple[str, str, str, str] | None = None
    suppression_store: str | None = None
    # The SuppressionFresh condition (type, status, reason, message), with a store reference.
    suppression_fresh: tuple[str, str, str, str] | None = None
    # The API server's refusal of a child write, if the last attempt was refused.
    apply_failure: ApplyFailure | None = None
    # The HorizontalPodAutoscaler as read (its status conditions), or None.
    autoscaler: dict[str, Any] | None = None
    # spec.autoscaling.requestsPerSecond is set but no custom metrics API is served.
    requests_per_second_ignored: bool = False


AUTOSCALER_CONDITIONS = {
    "ScalingActive": "the HorizontalPodAutoscaler computes replica counts from its metrics",
    "AbleToScale": "the HorizontalPodAutoscaler can change the replica count",
}


def _autoscaler_conditions(hpa: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    reported = {c.get("type"): c for c in ((hpa or {}).get("status") or {}).get("conditions")
                or []}
    out = []
    for ctype, fine in AUTOSCALER_CONDITIONS.items():
        c = reported.get(ctype)
        if c is None:
            out.append((ctype, "Unknown", "NotReported",
                        "the HorizontalPodAutoscaler has not reported yet"))
        elif c.get("status") == "True":
            out.append((ctype, "True", ctype, fine))
        else:
            out.append((ctype, str(c.get("status") or "Unknown"), c.get("reason") or "Unknown",
                        f"HorizontalPodAutoscaler: {c.get('message') or ''}"[:1000]))
    return out


def _conditions(obs: Observation) -> list[tuple[str, str, str, str]]:
    r = obs.rollout
    target = r.target_hash
    if obs.bundle_hash is not None:
        valid = ("PolicyValid", "True", "Valid",
                 f"policy {obs.bundle_hash} is valid ({obs.rule_count} rules)")
    else:
        valid = ("PolicyValid", "False", obs.rejection_reason or "InvalidPolicy",
                 obs.rejection_message or "the policy is invalid")
    if target is None:
        progressing = ("Progressing", "False", "NoValidPolicy",
                       "no valid policy has been rolled out yet")
        ready = ("Ready", "False", "NoValidPolicy", "no valid policy to serve")
    elif not r.complete:
        progressing = ("Progressing", "True", "RollingOut",
                       f"rolling out policy {target}: {r.updated}/{r.desired} replicas "
                       f"updated, {r.available} available")
        ready = ("Ready", "False", "RollingOut",
                 f"policy {target} is not yet live on every replica (the previous one "
                 "keeps serving)")
    else:
        progressing = ("Progressing", "False", "RolloutComplete",
                       f"policy {target} is live on {r.updated} replicas")
        if r.available >= 1:
            ready = ("Ready", "True", "PolicyLive",
                     f"policy {target} serving on {r.available} replicas")
        else:
            ready = ("Ready", "False", "NoReplicasAvailable", "no filter pod is available")
    if obs.apply_failure is not None:
        degraded = ("Degraded", "True", "ApplyFailed",
                    f"a child object was refused ({obs.apply_failure.reason}); see the "
                    "ApplyFailed condition")
    elif obs.bundle_hash is None and target is not None:
        degraded = ("Degraded", "True", "LastGoodPolicyServing",
                    f"the new policy is rejected ({valid[2]}); policy {target} keeps "
                    "serving")
    elif obs.bundle_hash is None:
        degraded = ("Degraded", "True", valid[2], "no valid policy: nothing is served")
    elif r.complete and r.available < obs.min_replicas:
        degraded = ("Degraded", "True", "BelowMinReplicas",
                    f"{r.available} filter pods available, replicas.min is "
                    f"{obs.min_replicas}")
    elif obs.suppression_fresh is not None and obs.suppression_fresh[2] == "SuppressionStale":
        degraded = ("Degraded", "True", "SuppressionStale", obs.suppression_fresh[3])
    elif obs.requests_per_second_ignored:
        degraded = ("Degraded", "True", "CustomMetricsUnavailable",
                    "autoscaling.requestsPerSecond is ignored: the cluster serves no "
                    "custom.metrics.k8s.io API (install a metrics adapter such as "
                    "prometheus-adapter exposing the metric); scaling on CPU only")
    else:
        degraded = ("Degraded", "False", "AsExpected", "all checks pass")
    out = [ready, progressing, valid, degraded, apply_condition(obs.apply_failure),
           *_autoscaler_conditions(obs.autoscaler)]
    if obs.suppression is not None:
        out.append(obs.suppression)
    if obs.suppression_fresh is not None:
        out.append(obs.suppression_fresh)
    return out


WARNING_WHEN = {("PolicyValid", "False"), ("Degraded", "True"), ("Ready", "False"),
                ("SuppressionReady", "False"), ("SuppressionFresh", "False"),
                ("ApplyFailed", "True")}


def _spampolicy_warning(ctype: str, cstatus: str, reason: str,
                        before: dict[str, Any] | None) -> bool:
    if ctype in AUTOSCALER_CONDITIONS:
        # New pods have no CPU figures for a minute: not worth a warning.
        return cstatus == "False" and reason != "FailedGetResourceMetric"
    return (ctype, cstatus) in WARNING_WHEN and reason != "RollingOut"


def compute_status(previous: dict[str, Any] | None, obs: Observation,
                   now: datetime.datetime) -> tuple[dict[str, Any], list[Transition]]:
    """The new status (the operator's fields only) and the condition transitions."""
    prev = previous or {}
    r = obs.rollout
    out: dict[str, Any] = {}
    if obs.generation is not None:
        out["observedGeneration"] = obs.generation

    prev_desired = prev.get("desiredPolicyHash")
    recent = list(prev.get("recentPolicyHashes") or [])
    started = prev.get("rolloutStartedAt")
    if r.target_hash is not None and r.target_hash != prev_desired:
        started = timestamp(now)
        recent = [r.target_hash] + [h for h in recent if h != r.target_hash]
    if r.target_hash is not None:
        out["desiredPolicyHash"] = r.target_hash
        out["recentPolicyHashes"] = recent[:MAX_RECENT_HASHES]
        out["rolloutStartedAt"] = started
    live = prev.get("policyHash")
    propagation = prev.get("lastPropagationSeconds")
    if r.complete and r.target_hash != live:
        begun = parse_timestamp(started)
        if begun is not None:
            propagation = round(max(0.0, (now - begun).total_seconds()), 3)
        live = r.target_hash
    if live is not None:
        out["policyHash"] = live
    if propagation is not None:
        out["lastPropagationSeconds"] = propagation
    out.update(replicas=r.replicas, readyReplicas=r.ready, updatedReplicas=r.updated,
               availableReplicas=r.available)
    if obs.suppression_store is not None:
        out["suppressionStore"] = obs.suppression_store
    elif "suppressionStore" in prev:
        out["suppressionStore"] = None  # the reference was removed: drop the field

    out["conditions"], transitions = build_conditions(prev, _conditions(obs), obs.generation,
                                                      now, _spampolicy_warning)
    return out, quiet_transitions(prev, transitions, ("ApplyFailed", *AUTOSCALER_CONDITIONS))


