"""Status and conditions as pure functions of what a reconcile observed."""

from __future__ import annotations

import datetime

from mailwarden_operator.common.status import Rollout, observe_rollout, status_patch
from mailwarden_operator.spampolicy.status import Observation, compute_status

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
ANNOTATION = "mailwarden.dev/policy-hash"


def deployment(hash_: str, *, generation: int = 2, observed: int = 2, replicas: int = 3,
               updated: int = 3, available: int = 3, total: int | None = None) -> dict:
    return {"metadata": {"generation": generation},
            "spec": {"replicas": replicas,
                     "template": {"metadata": {"annotations": {ANNOTATION: hash_}}}},
            "status": {"observedGeneration": observed, "replicas": total or updated,
                       "updatedReplicas": updated, "readyReplicas": available,
                       "availableReplicas": available}}


def conditions(status: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_rollout_is_complete_only_when_the_controller_saw_the_template_and_all_updated():
    assert observe_rollout(deployment("h1"), "h1", ANNOTATION).complete
    assert not observe_rollout(deployment("h1", observed=1), "h1", ANNOTATION).complete
    assert not observe_rollout(deployment("h1", updated=2), "h1", ANNOTATION).complete
    assert not observe_rollout(deployment("h1", total=4), "h1", ANNOTATION).complete  # old pod
    assert not observe_rollout(deployment("h1", available=2), "h1", ANNOTATION).complete
    assert not observe_rollout(deployment("h0"), "h1", ANNOTATION).complete
    assert not observe_rollout(None, "h1", ANNOTATION).complete


def test_a_rollout_then_completion_records_the_propagation_time():
    obs = Observation(generation=1, min_replicas=2, bundle_hash="h1", rule_count=4,
                      rollout=Rollout("h1", False, desired=2, updated=1, available=1))
    rolling, events = compute_status(None, obs, T0)
    assert conditions(rolling) == {"Ready": ("False", "RollingOut"),
                                   "Progressing": ("True", "RollingOut"),
                                   "PolicyValid": ("True", "Valid"),
                                   "Degraded": ("False", "AsExpected"),
                                   "ApplyFailed": ("False", "Applied")}
    assert rolling["desiredPolicyHash"] == "h1" and "policyHash" not in rolling
    assert rolling["observedGeneration"] == 1
    assert len(events) == 4  # every condition is new
    done = Observation(generation=1, min_replicas=2, bundle_hash="h1", rule_count=4,
                       rollout=Rollout("h1", True, desired=2, replicas=2, updated=2, ready=2,
                                       available=2))
    later = T0 + datetime.timedelta(seconds=42)
    live, events = compute_status(rolling, done, later)
    assert live["policyHash"] == "h1"
    assert live["lastPropagationSeconds"] == 42
    assert conditions(live)["Ready"] == ("True", "PolicyLive")
    assert {e.reason for e in events} == {"ReadyPolicyLive", "ProgressingRolloutComplete"}
    ready = next(c for c in live["conditions"] if c["type"] == "Ready")
    valid = next(c for c in live["conditions"] if c["type"] == "PolicyValid")
    assert ready["lastTransitionTime"] == "2026-01-01T12:00:42Z"
    assert valid["lastTransitionTime"] == "2026-01-01T12:00:00Z"  # did not flip
    # Nothing changed: nothing to write, no events.
    again, events = compute_status(live, done, later + datetime.timedelta(seconds=60))
    assert status_patch(live, again) == {} and events == []


def test_an_invalid_policy_keeps_the_last_good_one_and_says_so():
    live, _ = compute_status(None, Observation(
        generation=1, min_replicas=2, bundle_hash="h1",
        rollout=Rollout("h1", True, desired=2, replicas=2, updated=2, ready=2, available=2)),
        T0)
    bad = Observation(generation=2, min_replicas=2, bundle_hash=None,
                      rejection_reason="InvalidPolicy",
                      rejection_message="rules[0].pattern: unbalanced parenthesis",
                      rollout=Rollout("h1", True, desired=2, replicas=2, updated=2, ready=2,
                                      available=2))
    status, events = compute_status(live, bad, T0 + datetime.timedelta(seconds=5))
    assert conditions(status) == {"Ready": ("True", "PolicyLive"),
                                  "Progressing": ("False", "RolloutComplete"),
                                  "PolicyValid": ("False", "InvalidPolicy"),
                                  "Degraded": ("True", "LastGoodPolicyServing"),
                                  "ApplyFailed": ("False", "Applied")}
    assert status["policyHash"] == "h1" and status["observedGeneration"] == 2
    assert {(e.type, e.reason) for e in events} == {
        ("Warning", "PolicyValidInvalidPolicy"), ("Warning", "DegradedLastGoodPolicyServing")}
    message = next(c for c in status["conditions"] if c["type"] == "PolicyValid")["message"]
    assert "rules[0].pattern" in message


def test_no_valid_policy_ever_and_too_few_pods():
    status, _ = compute_status(None, Observation(
        generation=1, min_replicas=2, bundle_hash=None, rejection_reason="ModelNotFound",
        rejection_message="ConfigMap 'm' not found"), T0)
    assert conditions(status)["Ready"] == ("False", "NoValidPolicy")
    assert conditions(status)["Degraded"] == ("True", "ModelNotFound")
    thin, _ = compute_status(None, Observation(
        generation=1, min_replicas=3, bundle_hash="h1",
        rollout=Rollout("h1", True, desired=1, replicas=1, updated=1, ready=1, available=1)),
        T0)
    assert conditions(thin)["Degraded"] == ("True", "BelowMinReplicas")
