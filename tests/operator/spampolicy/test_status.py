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
                                   "ApplyFailed": ("False", "Applied"),
                                   "ScalingActive": ("Unknown", "NotReported"),
                                   "AbleToScale": ("Unknown", "NotReported")}
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
                                  "ApplyFailed": ("False", "Applied"),
                                  "ScalingActive": ("Unknown", "NotReported"),
                                  "AbleToScale": ("Unknown", "NotReported")}
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


def test_the_autoscalers_conditions_are_surfaced() -> None:
    from mailwarden_operator.spampolicy.status import Observation as Obs
    done = Rollout("h1", True, desired=2, replicas=2, updated=2, ready=2, available=2)
    failing = {"status": {"conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "ScaleDownStabilized",
         "message": "recent recommendations were higher than current one"},
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
         "message": "the HPA was unable to compute the replica count: unable to get metric"}]}}
    status, events = compute_status(None, Obs(generation=1, min_replicas=2, bundle_hash="h1",
                                              rollout=done, autoscaler=failing), T0)
    got = {c["type"]: c for c in status["conditions"]}
    assert (got["ScalingActive"]["status"], got["ScalingActive"]["reason"]) == \
        ("False", "FailedGetPodsMetric")
    assert "unable to get metric" in got["ScalingActive"]["message"]
    # True: a fixed message (the HPA rewrites its own with every recommendation, which
    # would be a status write each time).
    assert (got["AbleToScale"]["status"], got["AbleToScale"]["reason"]) == \
        ("True", "AbleToScale")
    assert any(e.type == "Warning" and e.reason == "ScalingActiveFailedGetPodsMetric"
               for e in events)
    assert not any(e.reason.startswith("AbleToScale") for e in events)


def test_an_unreadable_requests_per_second_target_is_degraded() -> None:
    done = Rollout("h1", True, desired=2, replicas=2, updated=2, ready=2, available=2)
    status, _ = compute_status(None, Observation(
        generation=1, min_replicas=2, bundle_hash="h1", rollout=done,
        requests_per_second_ignored=True), T0)
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "CustomMetricsUnavailable")
    assert "custom.metrics.k8s.io" in degraded["message"]


def test_the_hpa_leaves_out_a_target_it_could_not_read() -> None:
    from mailwarden_operator.spampolicy.render.hpa import render_hpa
    from mailwarden_operator.spampolicy.spec import with_defaults
    owner = {"metadata": {"name": "mail", "namespace": "ns", "uid": "u"},
             "spec": with_defaults({"policy": {}, "autoscaling": {
                 "requestsPerSecond": {"averageValue": 400}}})}
    assert [m["type"] for m in render_hpa(owner)["spec"]["metrics"]] == ["Resource", "Pods"]
    assert [m["type"] for m in render_hpa(owner, custom_metrics=False)["spec"]["metrics"]] == \
        ["Resource"]
