"""A policy change rolls out under load with zero failed calls: the operator writes a new
content-hashed ConfigMap and rolls the Deployment (`maxUnavailable: 0`), old pods drain
(preStop, NOT_SERVING, grace) while the client's health checks and retries move calls to
ready pods."""

from __future__ import annotations

import pytest

from e2e.conftest import E2E
from e2e.jobs import LoadRun, describe_load
from e2e.kube import wait_for

pytestmark = pytest.mark.timeout(1200)


def test_policy_change_rolls_out_with_zero_failed_calls_under_load(e2e: E2E) -> None:
    sp = e2e.wait_policy_settled()
    old_hash = sp["status"]["policyHash"]
    old_pods = {p["metadata"]["name"] for p in e2e.filter_pods(ready_only=False)}
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
    assert summary["failed"] == 0, summary["failures"]
    assert summary["hashes"].get(old_hash, 0) > 0 and summary["hashes"].get(new_hash, 0) > 0
    assert set(summary["last_hashes"]) == {new_hash}
    # The superseded ConfigMap is kept for rollback (keepPolicyConfigMaps), the new one live.
    assert old_hash in sp["status"].get("recentPolicyHashes", [])
