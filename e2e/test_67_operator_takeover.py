"""Operator takeover (issue 14, scenario 5): the active operator replica is SIGKILLed (every
process of its pod at once, a crash, not a deletion) and a policy change is made while no
replica is active. The standby must notice through kopf's peering that the active peer
stopped renewing, take over, and roll the change out to every filter pod, with no failed
call from a balancing client meanwhile.

Reported and asserted: the takeover time (kill -> the standby's first write for the
pending change), the time until every filter pod serves the new policy, and the calls
lost (none).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e import chart, figures
from e2e.conftest import E2E
from e2e.jobs import LoadRun, describe_load, disturbance
from e2e.kube import KubectlError, wait_for
from mailwarden_operator.spampolicy import naming

pytestmark = pytest.mark.timeout(900)

PEERING_LIFETIME = 15   # charts/mailwarden/values.yaml operator.peeringLifetime


def peers(e2e: E2E) -> dict[str, dict[str, Any]]:
    """The ClusterKopfPeering's peers: identity -> {priority, lastseen, lifetime}."""
    peering = e2e.kube.json("get", "clusterkopfpeering", chart.PEERING, namespaced=False)
    return dict(peering.get("status") or {})


def active_operator(e2e: E2E) -> dict[str, Any]:
    """The ready operator pod whose peer has the highest priority (kopf's rule: every
    other peer pauses while a higher-priority one is alive)."""
    pods = {p["metadata"]["name"]: p for p in chart.operator_pods(e2e.kube)}
    ranked = sorted(((info.get("priority", 0), ident.split("/")[0])
                     for ident, info in peers(e2e).items()
                     if ident.split("/")[0] in pods), reverse=True)
    assert ranked, f"no ready operator pod in the peering ({list(pods)}, {peers(e2e)})"
    return pods[ranked[0][1]]


def patch_policy(e2e: E2E, tag: float, timeout: float = 60) -> float:
    """Change the policy; the webhook (served by every replica) may refuse while the killed
    replica's endpoint is still listed, so retry as a user would. Returns the attempts'
    duration."""
    began = time.monotonic()
    wait_for(lambda: _try_patch(e2e, tag), timeout, "the policy change to be accepted",
             interval=0.5)
    return time.monotonic() - began


def _try_patch(e2e: E2E, tag: float) -> bool:
    try:
        e2e.kube.merge_patch("spampolicy", e2e.policy,
                             {"spec": {"policy": {"thresholds": {"tag": tag}}}})
    except KubectlError as exc:
        print(f"policy change refused, retrying: {exc}")
        return False
    return True


def test_the_standby_takes_over_a_pending_change_after_the_active_is_killed(e2e: E2E) -> None:
    faults = e2e.cluster.faults
    if faults is None:
        pytest.skip(f"the {e2e.cluster.provider} provider cannot kill a pod's processes")
    sp = e2e.wait_policy_settled()
    wait_for(lambda: len(chart.operator_pods(e2e.kube)) == 2, 300, "two ready operator pods",
             interval=2)
    old_hash = sp["status"]["policyHash"]
    thresholds = sp["spec"]["policy"]["thresholds"]
    tag = thresholds["tag"]
    new_tag = tag + 0.125 if tag + 0.125 <= thresholds["quarantine"] else tag - 0.125
    active = active_operator(e2e)
    victim, node = active["metadata"]["name"], active["spec"]["nodeName"]
    standby = next(p["metadata"]["name"] for p in chart.operator_pods(e2e.kube)
                   if p["metadata"]["name"] != victim)
    writes_before = chart.operator_metric(e2e.kube, "mailwarden_operator_api_writes_total")

    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=4, rate=40).start()
    timeline: dict[str, float] = {}
    try:
        killed_at = time.time()
        began = time.monotonic()
        killed = faults.kill_pod(node, active["metadata"]["uid"])
        assert killed > 0
        patch_policy(e2e, new_tag)
        timeline["policy change accepted"] = time.monotonic() - began
        status = wait_for(lambda: (lambda s: s if s.get("desiredPolicyHash") not in
                                   (None, old_hash) else None)(
                              e2e.spampolicy().get("status") or {}),
                          300, "an operator replica to take the pending change", interval=0.25)
        timeline["takeover: new desired hash written"] = time.monotonic() - began
        new_hash = status["desiredPolicyHash"]
        wait_for(lambda: e2e.kube.json("get", "deployment", e2e.workload)["spec"]["template"]
                 ["metadata"]["annotations"].get(naming.HASH_ANNOTATION) == new_hash
                 or None, 120, "the filter Deployment to carry the new hash", interval=0.5)
        timeline["Deployment rolled to the new hash"] = time.monotonic() - began
        e2e.wait_policy_live()
        timeline["every filter pod on the new hash"] = time.monotonic() - began
        load.wait_more_answers(100)
    finally:
        summary = load.stop()
    e2e.wait_policy_settled()
    pods_after = {p["metadata"]["name"]: p for p in chart.operator_pods(e2e.kube,
                                                                         ready_only=False)}
    writes_after = chart.operator_metric(e2e.kube, "mailwarden_operator_api_writes_total")
    restarts = sum(s.get("restartCount", 0) for s in
                   (pods_after.get(victim, {}).get("status") or {}).get("containerStatuses")
                   or [])
    seen = disturbance(summary, killed_at)
    figures.record("operator takeover", killed=victim, standby=standby, node=node,
                   timeline=timeline, clients=seen, answered=summary["ok"],
                   failed=summary["failed"], codes=summary["codes"],
                   latency_ms=[p["latency_ms"] for p in summary["pods"]],
                   peering_lifetime=PEERING_LIFETIME)
    print(f"\noperator takeover: SIGKILLed {killed} process(es) of the active replica {victim} "
          f"on {node}; standby {standby}; seconds after the kill: " +
          ", ".join(f"{k} {v:.1f}" for k, v in timeline.items()) +
          f"\nAPI writes before {writes_before}, after {writes_after}; {victim} restarted "
          f"{restarts} time(s); clients: {seen}; {describe_load(summary)}")
    assert restarts >= 1, f"{victim} was not restarted by its kubelet"
    # The standby did the work: its write counter moved (the killed replica's restarted
    # instance joins the peering with a lower priority, as a standby).
    assert writes_after.get(standby, 0) > writes_before.get(standby, 0), writes_after
    assert active_operator(e2e)["metadata"]["name"] == standby
    # kopf marks a peer dead once it has not renewed within its lifetime; the standby
    # notices at its next keep-alive, at most another lifetime later.
    assert timeline["takeover: new desired hash written"] <= 2 * PEERING_LIFETIME + 10, timeline
    assert summary["failed"] == 0, summary["failures"]
