"""The HorizontalPodAutoscaler the operator renders scales the filter pods up under load
(CPU from metrics-server, which every provider runs), and the SpamPolicy's status and
REPLICAS column follow; calls keep succeeding while new pods join."""

from __future__ import annotations

import time

import pytest

from e2e.conftest import E2E
from e2e.jobs import LoadRun, describe_load
from e2e.kube import wait_for

pytestmark = pytest.mark.timeout(1500)


def hpa_status(e2e: E2E) -> dict:
    return e2e.kube.json("get", "hpa", e2e.workload).get("status") or {}


def cpu_utilization(status: dict) -> int | None:
    for item in status.get("currentMetrics") or []:
        if item.get("type") == "Resource" and item["resource"]["name"] == "cpu":
            return item["resource"]["current"].get("averageUtilization")
    return None


def test_hpa_scales_the_filter_pods_up_under_load(e2e: E2E) -> None:
    e2e.wait_policy_settled()
    hpa = e2e.kube.json("get", "hpa", e2e.workload)
    minimum, maximum = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    # metrics-server reports pod CPU about a minute after pods start.
    wait_for(lambda: cpu_utilization(hpa_status(e2e)) is not None, 600,
             "the HPA to read CPU utilization from metrics-server", interval=5)
    start = hpa_status(e2e)
    before = start.get("currentReplicas", minimum)
    assert before < maximum, f"already at maxReplicas ({start})"

    # Unthrottled load from two pods, several threads each. The deadline is generous:
    # saturating the CPU is the point, and a slow answer is not a failed one.
    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=12, rate=0, parallelism=2,
                   deadline=30.0).start()
    began = time.monotonic()
    try:
        scaled = wait_for(lambda: (lambda s: s if s.get("desiredReplicas", 0) > before
                                   else None)(hpa_status(e2e)),
                          600, f"the HPA to want more than {before} replicas", interval=5)
        decided = time.monotonic() - began
        want = scaled["desiredReplicas"]
        wait_for(lambda: len(e2e.filter_pods()) >= want, 600,
                 f"{want} ready filter pods", interval=5)
        ready_after = time.monotonic() - began
        sp = wait_for(lambda: (lambda s: s if s["status"].get("readyReplicas", 0) >= want
                               else None)(e2e.spampolicy()), 300,
                      "the SpamPolicy status to count the new pods", interval=3)
    finally:
        summary = load.stop()
    print(f"HPA: {before} -> {want} replicas (CPU {cpu_utilization(scaled)}% of request); "
          f"decided after {decided:.0f} s of load, pods ready after {ready_after:.0f} s; "
          f"SpamPolicy readyReplicas {sp['status']['readyReplicas']}; {describe_load(summary)}")
    assert want > before and want > minimum
    assert summary["failed"] == 0, summary["failures"]
