"""A policy change rolls out under load with zero failed calls: the operator writes a new
content-hashed ConfigMap and rolls the Deployment (`maxUnavailable: 0`), old pods drain
(preStop, NOT_SERVING, grace) while the client's health checks and retries move calls to
ready pods."""

from __future__ import annotations

import pytest

from e2e.conftest import E2E
from e2e.jobs import LoadRun, describe_load
from e2e.kube import wait_for
from mailwarden_operator.spampolicy import naming

pytestmark = pytest.mark.timeout(1200)


def replica_sets(e2e: E2E) -> dict[str, int]:
    """The filter Deployment's ReplicaSets (by owner reference): name -> spec.replicas."""
    uid = e2e.kube.json("get", "deployment", e2e.workload)["metadata"]["uid"]
    return {rs["metadata"]["name"]: rs["spec"]["replicas"] for rs in e2e.kube.items("rs")
            if any(ref["uid"] == uid for ref in rs["metadata"].get("ownerReferences") or [])}


def test_policy_change_rolls_out_with_zero_failed_calls_under_load(e2e: E2E) -> None:
    sp = e2e.wait_policy_settled()
    old_hash = sp["status"]["policyHash"]
    old_pods = {p["metadata"]["name"] for p in e2e.filter_pods(ready_only=False)}
    old_sets = replica_sets(e2e)
    tag = sp["spec"]["policy"]["thresholds"]["tag"]
    new_tag = tag + 0.25 if tag + 0.25 <= sp["spec"]["policy"]["thresholds"]["quarantine"] \
        else tag - 0.25

    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=4, rate=40).start()
    try:
        e2e.kube.merge_patch("spampolicy", e2e.policy,
                             {"spec": {"policy": {"thresholds": {"tag": new_tag}}}})
        wait_for(lambda: e2e.spampolicy()["status"].get("desiredPolicyHash") not in
                 (None, old_hash), 120, "the operator to accept the new policy")
        sp = e2e.wait_policy_settled()
        new_hash = sp["status"]["policyHash"]
        # Every old pod is gone (not just terminating), so the last answers come from new pods.
        wait_for(lambda: not old_pods & {p["metadata"]["name"]
                                         for p in e2e.filter_pods(ready_only=False)},
                 300, "the old filter pods to exit", interval=2)
        # Well over the 50 answers per load pod whose hashes the summary keeps.
        load.wait_more_answers(200)
    finally:
        summary = load.stop()
    print(f"rollout {old_hash} -> {new_hash} in {sp['status'].get('lastPropagationSeconds')} s "
          f"(operator's figure); {describe_load(summary)}; answers per hash "
          f"{summary['hashes']}")
    assert new_hash != old_hash
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
