"""Disruptions under load: a deleted filter pod, evictions against the PodDisruptionBudget,
and a node drain — each with zero failed calls, and the PDB never violated."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from e2e import figures
from e2e.conftest import E2E
from e2e.jobs import LoadRun, describe_load, disturbance
from e2e.kube import KubectlError, wait_for

pytestmark = pytest.mark.timeout(1200)


class ReadyWatch:
    """Samples the number of ready filter pods (the endpoints clients can use) every half
    second while a disruption runs; `low` is the smallest count seen."""

    def __init__(self, e2e: E2E) -> None:
        self.e2e = e2e
        self.low: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                count = len(self.e2e.filter_pods())
            except KubectlError:
                continue
            self.samples += 1
            self.low = count if self.low is None else min(self.low, count)

    def __enter__(self) -> "ReadyWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def pdb_min_healthy(e2e: E2E) -> int:
    pdb = e2e.kube.json("get", "pdb", e2e.workload)
    return pdb["status"]["desiredHealthy"]


def pdb_allows_one(e2e: E2E) -> bool:
    """The PDB's status has caught up with the settled Deployment."""
    pdb = e2e.kube.json("get", "pdb", e2e.workload)
    status = pdb.get("status") or {}
    return (status.get("observedGeneration") == pdb["metadata"]["generation"]
            and status.get("currentHealthy") == status.get("expectedPods")
            == len(e2e.filter_pods()) and status.get("disruptionsAllowed", 0) >= 1)


def evict(e2e: E2E, pod: str) -> Any:
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": e2e.namespace}}
    return e2e.kube.run("create", "--raw",
                        f"/api/v1/namespaces/{e2e.namespace}/pods/{pod}/eviction", "-f", "-",
                        input=json.dumps(body), namespaced=False, check=False)


def test_deleting_a_filter_pod_fails_no_call(e2e: E2E) -> None:
    e2e.wait_policy_settled()
    victim = e2e.filter_pods()[0]["metadata"]["name"]
    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=4, rate=40).start()
    try:
        e2e.kube.run("delete", "pod", victim, "--wait=true", timeout=300)
        e2e.wait_policy_settled()
        load.wait_more_answers(100)
    finally:
        summary = load.stop()
    print(f"deleted {victim}: {describe_load(summary)}")
    assert summary["failed"] == 0, summary["failures"]


def test_a_second_concurrent_eviction_is_refused_by_the_pdb(e2e: E2E) -> None:
    e2e.wait_policy_settled()
    wait_for(lambda: pdb_allows_one(e2e), 120, "the PDB status to catch up", interval=2)
    pods = [p["metadata"]["name"] for p in e2e.filter_pods()]
    assert len(pods) >= 2
    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=4, rate=40).start()
    try:
        first = evict(e2e, pods[0])
        assert first.returncode == 0, first.stderr
        # The PDB (maxUnavailable 1) has no disruption left until the replacement is ready.
        refused = [evict(e2e, name) for name in pods[1:]]
        for result in refused:
            assert result.returncode != 0
            assert "disruption budget" in result.stderr, result.stderr
        print(f"evicted {pods[0]}; refused: {refused[0].stderr.strip()}")
        e2e.wait_policy_settled()
        load.wait_more_answers(100)
    finally:
        summary = load.stop()
    print(describe_load(summary))
    assert summary["failed"] == 0, summary["failures"]


def test_draining_a_node_respects_the_pdb_with_zero_failed_calls(e2e: E2E) -> None:
    e2e.wait_policy_settled()
    filter_nodes = {p["spec"]["nodeName"] for p in e2e.filter_pods()}
    # Not the node of the embedded store: its volume is node-local (a local volume on every
    # provider), so a drain would leave that pod Pending until the node is uncordoned.
    store_nodes = {p["spec"].get("nodeName") for p in e2e.kube.items(
        "pods", "-l", f"mailwarden.dev/unsubscribestore={e2e.store}")} if e2e.store else set()
    candidates = sorted(filter_nodes - store_nodes) or sorted(filter_nodes)
    node = candidates[0]
    minimum = pdb_min_healthy(e2e)
    want = len(e2e.filter_pods())
    moved = {p["metadata"]["name"] for p in e2e.filter_pods() if p["spec"]["nodeName"] == node}
    # The load runs elsewhere: the drain must not take down what measures it.
    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=4, rate=40,
                   avoid_nodes=(node,)).start()
    timeline: dict[str, float] = {}
    try:
        with ReadyWatch(e2e) as watch:
            began_at = time.time()
            began = time.monotonic()
            drained = e2e.kube.run("drain", node, "--ignore-daemonsets",
                                   "--delete-emptydir-data", "--timeout=600s",
                                   namespaced=False, timeout=700)
            timeline["kubectl drain returned"] = time.monotonic() - began
            # Full capacity: as many ready pods elsewhere as the Deployment wants now (the
            # HPA may be scaling meanwhile).
            wait_for(lambda: len([p for p in e2e.filter_pods()
                                  if p["spec"]["nodeName"] != node]) >= min(want, e2e.kube.json(
                                      "get", "deployment", e2e.workload)["spec"]["replicas"]),
                     300, f"the wanted ready filter pods off {node}", interval=0.5)
            timeline["full capacity on the other nodes"] = time.monotonic() - began
            e2e.wait_policy_settled()
        load.wait_more_answers(100)
    finally:
        summary = load.stop()
        e2e.kube.run("uncordon", node, namespaced=False, check=False)
    retries = drained.stdout.count("disruption budget") + drained.stderr.count(
        "disruption budget")
    seen = disturbance(summary, began_at)
    figures.record("drain", node=node, moved_pods=sorted(moved), timeline=timeline,
                   clients=seen, answered=summary["ok"], failed=summary["failed"],
                   codes=summary["codes"], ready_low=watch.low, pdb_minimum=minimum,
                   pdb_refusals_retried=retries,
                   latency_ms=[p["latency_ms"] for p in summary["pods"]])
    print(f"drained {node} ({sorted(moved)}), seconds: {timeline}; clients: {seen}")
    print(f"drained {node}: ready filter pods never below {watch.low} "
          f"({watch.samples} samples, PDB minimum {minimum}); kubectl drain retried "
          f"{retries} eviction(s) refused by a PDB; {describe_load(summary)}")
    assert node not in {p["spec"]["nodeName"] for p in e2e.filter_pods()}
    assert watch.samples > 0 and watch.low is not None and watch.low >= minimum
    assert summary["failed"] == 0, summary["failures"]
