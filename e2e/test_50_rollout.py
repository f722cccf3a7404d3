"""A policy change rolls out under load with zero failed calls: the operator writes a new
content-hashed ConfigMap and rolls the Deployment (`maxUnavailable: 0`), old pods drain
(preStop, NOT_SERVING, grace) while the client's health checks and retries move calls to
ready pods.

Operator takeover (issue 14, scenario 5) rides on the same rollout where the provider can
kill a pod's processes (process): the active operator replica is SIGKILLed (every process
of its pod at once, a crash, not a deletion) right before the change, so the change is
made while no replica is active. The standby must notice through kopf's peering that the
active peer stopped renewing, take over and roll the change out. Reported and asserted:
the takeover time (kill -> the standby's first write for the pending change), the time
until every filter pod serves the new policy, and the calls lost (none). (It was a test of
its own, test_67, with its own rollout: 45-70 s more CI time for the same rollout.)
"""

from __future__ import annotations

import time

import pytest

from e2e import chart, figures
from e2e.conftest import E2E
from e2e.jobs import LoadRun, describe_load, disturbance
from e2e.kube import KubectlError, wait_for
from mailwarden_operator.spampolicy import naming

pytestmark = pytest.mark.timeout(1200)

PEERING_LIFETIME = 15   # charts/mailwarden/values.yaml operator.peeringLifetime


def replica_sets(e2e: E2E) -> dict[str, int]:
    """The filter Deployment's ReplicaSets (by owner reference): name -> spec.replicas."""
    uid = e2e.kube.json("get", "deployment", e2e.workload)["metadata"]["uid"]
    return {rs["metadata"]["name"]: rs["spec"]["replicas"] for rs in e2e.kube.items("rs")
            if any(ref["uid"] == uid for ref in rs["metadata"].get("ownerReferences") or [])}


def patch_tag(e2e: E2E, tag: float, timeout: float = 60) -> None:
    """Change the policy's tag threshold. Right after an operator replica is killed the
    webhook (served by every replica) may refuse while the killed replica's endpoint is
    still listed: retry as a user would."""
    def attempt() -> bool:
        try:
            e2e.kube.merge_patch("spampolicy", e2e.policy,
                                 {"spec": {"policy": {"thresholds": {"tag": tag}}}})
        except KubectlError as exc:
            print(f"policy change refused, retrying: {exc}")
            return False
        return True
    wait_for(attempt, timeout, "the policy change to be accepted", interval=0.5)


def test_policy_change_rolls_out_with_zero_failed_calls_under_load(e2e: E2E) -> None:
    faults = e2e.cluster.faults
    sp = e2e.wait_policy_settled()
    old_hash = sp["status"]["policyHash"]
    old_pods = {p["metadata"]["name"] for p in e2e.filter_pods(ready_only=False)}
    old_sets = replica_sets(e2e)
    tag = sp["spec"]["policy"]["thresholds"]["tag"]
    new_tag = tag + 0.25 if tag + 0.25 <= sp["spec"]["policy"]["thresholds"]["quarantine"] \
        else tag - 0.25
    if faults is not None:
        wait_for(lambda: len(chart.operator_pods(e2e.kube)) == 2, 300,
                 "two ready operator pods", interval=2)
        active = chart.active_operator(e2e.kube)
        victim, node = active["metadata"]["name"], active["spec"]["nodeName"]
        standby = next(p["metadata"]["name"] for p in chart.operator_pods(e2e.kube)
                       if p["metadata"]["name"] != victim)
        writes_before = chart.operator_metric(e2e.kube, "mailwarden_operator_api_writes_total")

    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=4, rate=40).start()
    timeline: dict[str, float] = {}
    try:
        changed_at = time.time()
        began = time.monotonic()
        if faults is not None:
            assert faults.kill_pod(node, active["metadata"]["uid"]) > 0
        patch_tag(e2e, new_tag)
        timeline["policy change accepted"] = time.monotonic() - began
        wait_for(lambda: e2e.spampolicy()["status"].get("desiredPolicyHash") not in
                 (None, old_hash), 300, "an operator replica to accept the new policy",
                 interval=0.25)
        timeline["new desired hash written"] = time.monotonic() - began
        new_desired = e2e.spampolicy()["status"]["desiredPolicyHash"]
        wait_for(lambda: e2e.kube.json("get", "deployment", e2e.workload)["spec"]["template"]
                 ["metadata"]["annotations"].get(naming.HASH_ANNOTATION) == new_desired
                 or None, 120, "the filter Deployment to carry the new hash", interval=0.5)
        timeline["Deployment rolled to the new hash"] = time.monotonic() - began
        e2e.wait_policy_live()
        timeline["every filter pod on the new hash"] = time.monotonic() - began
        sp = e2e.wait_policy_settled()
        new_hash = sp["status"]["policyHash"]
        # Every old pod is gone (not just terminating), so the last answers come from new pods.
        wait_for(lambda: not old_pods & {p["metadata"]["name"]
                                         for p in e2e.filter_pods(ready_only=False)},
                 300, "the old filter pods to exit", interval=2)
        timeline["old filter pods gone"] = time.monotonic() - began
        # Well over the 50 answers per load pod whose hashes the summary keeps.
        load.wait_more_answers(200)
    finally:
        summary = load.stop()
    print(f"rollout {old_hash} -> {new_hash} in {sp['status'].get('lastPropagationSeconds')} s "
          f"(operator's figure); seconds after the change: " +
          ", ".join(f"{k} {v:.1f}" for k, v in timeline.items()) +
          f"; {describe_load(summary)}; answers per hash {summary['hashes']}")
    assert new_hash != old_hash and new_hash == new_desired
    # A real rolling update: the Deployment controller made a new ReplicaSet for the new
    # template and scaled every old one to zero.
    sets = replica_sets(e2e)
    new_sets = {name: n for name, n in sets.items() if name not in old_sets}
    print(f"ReplicaSets before {old_sets}, after {sets}")
    assert len(new_sets) == 1 and list(new_sets.values()) == [len(e2e.filter_pods())]
    assert all(sets.get(name, 0) == 0 for name in old_sets)
    assert summary["failed"] == 0, summary["failures"]
    assert summary["hashes"].get(old_hash, 0) > 0 and summary["hashes"].get(new_hash, 0) > 0
    assert set(summary["last_hashes"]) == {new_hash}
    # The superseded ConfigMap is kept for rollback (keepPolicyConfigMaps), the new one live.
    assert old_hash in sp["status"].get("recentPolicyHashes", [])
    if faults is not None:
        check_takeover(e2e, victim=victim, standby=standby, node=node,
                       writes_before=writes_before, timeline=timeline, summary=summary,
                       changed_at=changed_at)


def check_takeover(e2e: E2E, *, victim: str, standby: str, node: str,
                   writes_before: dict[str, float], timeline: dict[str, float],
                   summary: dict, changed_at: float) -> None:
    pods_after = {p["metadata"]["name"]: p for p in chart.operator_pods(e2e.kube,
                                                                         ready_only=False)}
    writes_after = chart.operator_metric(e2e.kube, "mailwarden_operator_api_writes_total")
    restarts = sum(s.get("restartCount", 0) for s in
                   (pods_after.get(victim, {}).get("status") or {}).get("containerStatuses")
                   or [])
    seen = disturbance(summary, changed_at)
    takeover = {("takeover: new desired hash written" if k == "new desired hash written"
                 else k): v for k, v in timeline.items()}
    figures.record("operator takeover", killed=victim, standby=standby, node=node,
                   timeline=takeover, clients=seen, answered=summary["ok"],
                   failed=summary["failed"], codes=summary["codes"],
                   latency_ms=[p["latency_ms"] for p in summary["pods"]],
                   peering_lifetime=PEERING_LIFETIME)
    print(f"\noperator takeover: the active replica {victim} on {node} SIGKILLed; standby "
          f"{standby}; API writes before {writes_before}, after {writes_after}; {victim} "
          f"restarted {restarts} time(s); clients: {seen}")
    assert restarts >= 1, f"{victim} was not restarted by its kubelet"
    # The standby did the work: its write counter moved (the killed replica's restarted
    # instance joins the peering with a lower priority, as a standby).
    assert writes_after.get(standby, 0) > writes_before.get(standby, 0), writes_after
    assert chart.active_operator(e2e.kube)["metadata"]["name"] == standby
    # kopf marks a peer dead once it has not renewed within its lifetime; the standby
    # notices at its next keep-alive, at most another lifetime later.
    assert timeline["new desired hash written"] <= 2 * PEERING_LIFETIME + 10, timeline

def policy_configmaps(e2e: E2E) -> dict[str, str]:
    """The SpamPolicy's policy ConfigMaps: name -> the hash they hold."""
    items = e2e.kube.items("configmaps", "-l", f"{naming.POLICY_LABEL}={e2e.policy},"
                                               f"{naming.ROLE_LABEL}=policy")
    return {cm["metadata"]["name"]: cm["metadata"]["labels"][naming.HASH_LABEL] for cm in items}


def test_old_policy_configmaps_are_pruned_keeping_the_newest(e2e: E2E) -> None:
    """docs/operator.md: a change is a new ConfigMap; old ones are deleted once a rollout has
    completed, keeping the newest `operator.keepPolicyConfigMaps` (3, the live one
    included). Two more policy changes make at least four hashes in this policy's life; the
    second comes while the first is rolling out (a superseded rollout still counts in the
    history, and its ConfigMap is kept or pruned like any other)."""
    keep = 3
    seen = list(e2e.wait_policy_settled()["status"].get("recentPolicyHashes") or [])
    hashes_made = set(policy_configmaps(e2e).values()) | set(seen)
    for step in (0.1, 0.2):
        sp = e2e.spampolicy()
        tag = sp["spec"]["policy"]["thresholds"]["tag"]
        old = sp["status"]["desiredPolicyHash"]
        e2e.kube.merge_patch("spampolicy", e2e.policy,
                             {"spec": {"policy": {"thresholds": {"tag": round(tag - step, 3)}}}})
        accepted = wait_for(lambda old=old: (lambda s: s if s["status"].get("desiredPolicyHash")
                                             not in (None, old) else None)(e2e.spampolicy()),
                            120, "the operator to accept the new policy")
        hashes_made.add(accepted["status"]["desiredPolicyHash"])
    assert len(hashes_made) > keep, hashes_made
    # Rollout complete is what the prune waits for (old pods may still be draining).
    sp = e2e.wait_policy_live()
    assert sp["status"]["policyHash"] == accepted["status"]["desiredPolicyHash"]
    live = sp["status"]["policyHash"]
    recent = sp["status"]["recentPolicyHashes"]
    # The prune follows the completed rollout (same reconcile); allow the next one too.
    left = wait_for(lambda: (lambda cms: cms if len(cms) == keep else None)(
        policy_configmaps(e2e)), 120, f"{keep} policy ConfigMaps to remain")
    print(f"{len(hashes_made)} policy hashes so far; kept {sorted(left.values())}, "
          f"live {live}, recentPolicyHashes {recent}")
    assert set(left.values()) == set(recent[:keep]) and live in left.values()
    assert set(left) == {naming.configmap_name(e2e.policy, h) for h in recent[:keep]}
    # What was pruned is really gone from the API server.
    for gone in hashes_made - set(left.values()):
        assert e2e.kube.get("configmap", naming.configmap_name(e2e.policy, gone)) is None
