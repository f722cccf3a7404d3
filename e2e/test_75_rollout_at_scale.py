"""Policy rollout under load at 10 replicas through the real Deployment controller (issue 14,
scenario 4). Only in the report's long profile (MAILWARDEN_E2E_PROFILE=long,
`scripts/fault-report.sh --e2e`): ten filter pods and two rollouts' worth of pod starts are
minutes of CPU on a CI machine; CI keeps test_50's rollout at the example's size. It runs
after the other fault tests (the HPA surge included, hence its number): once `replicas.min`
is restored, the HPA keeps the ten pods for its scale-down stabilization window
(5 minutes), which would skew a drain or node loss and leave a surge no room to scale.

Reported and asserted: 0 failed calls; the time from the change until every answer carries
the new hash (the last old-hash answer, from the clients' own record), the rollout's length.
"""

from __future__ import annotations

import time

import pytest

from e2e import figures
from e2e.conftest import E2E
from e2e.jobs import LoadRun, describe_load, disturbance
from e2e.kube import wait_for

pytestmark = pytest.mark.timeout(1800)

REPLICAS = 10


def _rollout_at_scale(e2e: E2E) -> None:
    sp = e2e.wait_policy_settled()
    replicas = dict(sp["spec"]["replicas"])
    e2e.kube.merge_patch("spampolicy", e2e.policy, {"spec": {"replicas": {
        "min": REPLICAS, "max": max(REPLICAS, replicas["max"])}}})
    try:
        wait_for(lambda: len(e2e.filter_pods()) >= REPLICAS, 600,
                 f"{REPLICAS} ready filter pods", interval=2)
        sp = e2e.wait_policy_settled()
        old_hash = sp["status"]["policyHash"]
        old_pods = {p["metadata"]["name"] for p in e2e.filter_pods(ready_only=False)}
        thresholds = sp["spec"]["policy"]["thresholds"]
        tag = thresholds["tag"]
        new_tag = tag + 0.0625 if tag + 0.0625 <= thresholds["quarantine"] else tag - 0.0625
        load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=8, rate=80).start()
        timeline: dict[str, float] = {}
        try:
            load.wait_more_answers(80)
            changed_at = time.time()
            began = time.monotonic()
            e2e.kube.merge_patch("spampolicy", e2e.policy,
                                 {"spec": {"policy": {"thresholds": {"tag": new_tag}}}})
            sp = e2e.wait_policy_settled(timeout=900)
            timeline["rollout complete (every pod new and ready)"] = time.monotonic() - began
            wait_for(lambda: not old_pods & {p["metadata"]["name"]
                                             for p in e2e.filter_pods(ready_only=False)},
                     600, "the old filter pods to exit", interval=1)
            timeline["last old pod gone"] = time.monotonic() - began
            load.wait_more_answers(200)
        finally:
            summary = load.stop()
    finally:
        e2e.kube.merge_patch("spampolicy", e2e.policy, {"spec": {"replicas": replicas}})
    new_hash = sp["status"]["policyHash"]
    seen_hashes = summary["hash_seen"]
    assert new_hash in seen_hashes, seen_hashes
    timeline["first new-hash answer"] = seen_hashes[new_hash][0] - changed_at
    if old_hash in seen_hashes:
        timeline["last old-hash answer (every answer new after)"] = \
            seen_hashes[old_hash][1] - changed_at
    seen = disturbance(summary, changed_at)
    figures.record(f"rollout at {REPLICAS} replicas", timeline=timeline, clients=seen,
                   answered=summary["ok"], failed=summary["failed"], codes=summary["codes"],
                   latency_ms=[p["latency_ms"] for p in summary["pods"]],
                   answers_per_hash=summary["hashes"])
    print(f"\nrollout at {REPLICAS} replicas {old_hash} -> {new_hash}, seconds after the "
          f"change: " + ", ".join(f"{k} {v:.1f}" for k, v in timeline.items()) +
          f"\nclients: {seen}; {describe_load(summary)}; answers per hash {summary['hashes']}")
    assert new_hash != old_hash
    assert summary["failed"] == 0, summary["failures"]
    # After the last old pod is gone nothing can answer with the old hash.
    assert timeline.get("last old-hash answer (every answer new after)", 0) <= \
        timeline["last old pod gone"] + 1, timeline
    e2e.wait_policy_settled()


if figures.long_profile():
    # Defined only in the long profile, so CI neither runs nor lists it as skipped.
    def test_policy_rollout_at_ten_replicas_under_load(e2e: E2E) -> None:
        _rollout_at_scale(e2e)
