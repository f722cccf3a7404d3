"""rollout.strategy Canary: the state machine of one canary rollout.

A new valid policy first serves on a second Deployment (`<name>-filter-canary`) whose pods
match the Services' selector, so they take a share of the traffic by pod count, while the
main Deployment keeps serving the previous policy. The canary grows through
`rollout.canary.steps`; at every check its pods' figures are compared with the main pods'
(canary_guards.py). A guard crossed scales the canary Deployment to 0 (the previous policy never
stopped serving anywhere) and records `status.lastRollback`; that policy is not tried again
until the spec changes. After the last step the main Deployment rolls out the new policy
(an ordinary rolling update, never below capacity) and the canary goes once it is complete.

All state is in `status.canary` / `status.lastRollback` and the two Deployments, so an
operator replica that takes over mid-rollout carries on from where the last one stopped.
`decide` only reads and returns a plan; the reconciler applies it.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from mailwarden_operator.common.status import parse_timestamp, timestamp
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.canary_guards import Figures, judge, summary

CONDITION = "CanaryRolledBack"


@dataclass
class Plan:
    """What the reconciler does for a Canary policy."""
    serving_hash: str                      # the main Deployment's policy
    canary_hash: str | None = None         # run the canary Deployment with this policy
    canary_replicas: int = 0
    keep_canary: bool = False              # promoted: leave it until the main one is done
    canary: dict[str, Any] | None = None   # status.canary
    last_rollback: dict[str, Any] | None = None  # status.lastRollback (unchanged or new)
    condition: tuple[str, str, str, str] | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    running: bool = False                  # the canary Deployment has pods (as read)


def canary_replicas(weight: int, main_replicas: int, max_replicas: int) -> int:
    """Canary pods so that they are `weight` percent of all filter pods (at least one)."""
    wanted = math.ceil(max(main_replicas, 1) * weight / (100 - weight))
    return max(1, min(wanted, max_replicas))


def available(deployment: dict[str, Any] | None, policy_hash: str, replicas: int) -> bool:
    """Whether the canary Deployment runs `replicas` available pods of `policy_hash`."""
    if deployment is None:
        return False
    meta, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    st = deployment.get("status") or {}
    template = (spec.get("template", {}).get("metadata", {}).get("annotations") or {}
                ).get(naming.HASH_ANNOTATION)
    seen = (st.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
    return (seen and template == policy_hash and int(spec.get("replicas", 0)) == replicas
            and int(st.get("updatedReplicas", 0)) >= replicas
            and int(st.get("availableReplicas", 0)) >= replicas)


def _step_text(state: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    return (f"step {state['step'] + 1}/{len(steps)} ({state['weight']}% of pods, "
            f"{state['replicas']} canary pods)")


def _figures_text(figures: dict[str, Any]) -> str:
    keys = ("canaryMessages", "stableMessages", "rejectRate", "stableRejectRate",
            "verdictChangeRate", "errorRate", "stableErrorRate", "p99Seconds",
            "stableP99Seconds")
    return ", ".join(f"{k}={figures[k]:g}" for k in keys if k in figures)


def decide(spec: dict[str, Any], candidate: str, live: str | None, main_replicas: int,
           canary_deployment: dict[str, Any] | None, previous: dict[str, Any],
           now: datetime.datetime,
           observe: Callable[[str, str], tuple[Figures, Figures]]) -> Plan:
    """The plan for a (defaulted) spec whose newest valid policy is `candidate`, while the
    main Deployment serves `live` (None: nothing runs yet). `previous`: the status."""
    settings = spec["rollout"]["canary"]
    steps, guards = settings["steps"], settings["guards"]
    state = previous.get("canary") or None
    rollback = previous.get("lastRollback") or None
    plan = Plan(serving_hash=live or candidate, last_rollback=rollback)

    if state and state.get("policyHash") == candidate and state.get("promoted"):
        plan.serving_hash, plan.keep_canary, plan.canary = candidate, True, state
        plan.condition = (CONDITION, "False", "CanaryPromoted",
                          f"policy {candidate} passed every step and rolls out to every pod")
        return plan
    if live is None or candidate == live:
        # Nothing ran before (the first policy is served at once), or the spec went back
        # to the live policy: no canary; one in progress is withdrawn.
        if state:
            plan.events.append(("Normal", "CanaryWithdrawn",
                                f"canary of policy {state.get('policyHash')} withdrawn: "
                                f"the spec asks for {candidate}, which serves"))
        plan.condition = (CONDITION, "False", "NoCanary", f"policy {plan.serving_hash} "
                          "serves; no canary in progress")
        return plan
    if rollback and rollback.get("policyHash") == candidate:
        plan.condition = (CONDITION, "True", "GuardCrossed", _rollback_text(rollback))
        return plan

    if not state or state.get("policyHash") != candidate \
            or state.get("stablePolicyHash") != live:
        if state:
            plan.events.append(("Normal", "CanaryWithdrawn",
                                f"canary of policy {state.get('policyHash')} replaced by "
                                f"{candidate}"))
        state = {"policyHash": candidate, "stablePolicyHash": live, "step": 0,
                 "startedAt": timestamp(now)}
        started = True
    else:
        state = {k: v for k, v in state.items() if k != "figures"}
        started = False
    state["step"] = min(int(state.get("step", 0)), len(steps) - 1)
    step = steps[state["step"]]
    state["weight"] = step["weight"]
    state["replicas"] = canary_replicas(step["weight"], main_replicas,
                                        spec["replicas"]["max"])
    if started:
        plan.events.append(("Normal", "CanaryStarted",
                            f"policy {candidate} serves on the canary, "
                            f"{_step_text(state, steps)}; policy {live} on the others"))

    canary_figures, stable_figures = observe(candidate, live)
    state["figures"] = summary(canary_figures, stable_figures)
    crossed = judge(guards, canary_figures, stable_figures)
    if crossed is not None:
        begun = parse_timestamp(state.get("stepStartedAt") or state.get("startedAt"))
        rollback = {"policyHash": candidate, "stablePolicyHash": live,
                    "guard": crossed.guard, "observed": round(crossed.observed, 4),
                    "limit": crossed.limit, "step": state["step"], "at": timestamp(now),
                    "secondsAfterStepStart": round(max(0.0, (now - begun).total_seconds()),
                                                   3) if begun else 0.0}
        plan.last_rollback = rollback
        message = (f"{_rollback_text(rollback)} ({_figures_text(state['figures'])})")
        plan.condition = (CONDITION, "True", "GuardCrossed", message)
        plan.events.append(("Warning", "CanaryRolledBack", message))
        return plan

    if not state.get("stepStartedAt") and available(canary_deployment, candidate,
                                                   state["replicas"]):
        state["stepStartedAt"] = timestamp(now)
    begun = parse_timestamp(state.get("stepStartedAt"))
    held = begun is not None and (now - begun).total_seconds() >= step.get("holdSeconds", 0)
    if held and canary_figures.messages >= guards["minSamples"]:
        if state["step"] + 1 >= len(steps):
            state["promoted"] = True
            plan.serving_hash, plan.keep_canary = candidate, True
            plan.events.append(("Normal", "CanaryPromoted",
                                f"policy {candidate} passed {len(steps)} steps within its "
                                f"guards ({_figures_text(state['figures'])}); it rolls out "
                                "to every pod"))
            plan.canary = state
            plan.condition = (CONDITION, "False", "CanaryPromoted",
                              f"policy {candidate} passed every step and rolls out to "
                              "every pod")
            return plan
        state["step"] += 1
        state.pop("stepStartedAt", None)
        state["weight"] = steps[state["step"]]["weight"]
        state["replicas"] = canary_replicas(state["weight"], main_replicas,
                                            spec["replicas"]["max"])
        plan.events.append(("Normal", "CanaryStep",
                            f"policy {candidate} within its guards; "
                            f"{_step_text(state, steps)}"))
    plan.canary = state
    plan.canary_hash, plan.canary_replicas = candidate, state["replicas"]
    waiting = "" if state.get("stepStartedAt") else "; waiting for its pods"
    if canary_figures.pods_read < canary_figures.pods:
        # Unread pods count nothing: the step waits for minSamples it cannot see.
        waiting += (f"; /metrics of {canary_figures.pods - canary_figures.pods_read} of "
                    f"{canary_figures.pods} canary pods unreadable (the operator needs "
                    "network access to their metrics port)")
    plan.condition = (CONDITION, "False", "CanaryInProgress",
                      f"policy {candidate} at {_step_text(state, steps)}{waiting}; guards "
                      "within limits")
    return plan


def _rollback_text(rollback: dict[str, Any]) -> str:
    return (f"policy {rollback['policyHash']} rolled back at step {rollback['step'] + 1}: "
            f"guard {rollback['guard']} {rollback['observed']:g} > limit "
            f"{rollback['limit']:g}; policy {rollback['stablePolicyHash']} kept serving "
            "(change the spec to try another policy)")
