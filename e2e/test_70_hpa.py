"""Surge -> HPA scale-up (issue 14, scenario 1). The HorizontalPodAutoscaler the operator
renders scales the filter pods up under a load well over what `replicas.min` serves (CPU
from metrics-server, which every provider runs), and the SpamPolicy's status follows.

Reported and asserted: the clients (a balancing `FilterClient` with the default 5 s
deadline) see no failed call except RESOURCE_EXHAUSTED (admission control shedding what a
saturated pod cannot take; counted); and where the time from surge onset to the first
added pod serving goes (`SurgeWatch`): metrics (metrics-server's resolution, the HPA's
15 s sync), the HPA's decision, the ReplicaSet creating the pod, scheduling, the node
agent starting it, Ready (policy compile, gRPC readiness probe), and its first answered
call (the clients learn of a new pod when they re-resolve the headless Service, which a
connection reaching the server's max age triggers). The long profile
(MAILWARDEN_E2E_PROFILE=long, scripts/fault-report.sh --e2e) then ends the surge and
waits for the scale-down, with 0 failed calls from the load that stays.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import pytest

from e2e import figures
from e2e.conftest import E2E
from e2e.jobs import LoadRun, describe_load
from e2e.kube import KubectlError, metric, wait_for
from mailwarden_operator.spampolicy import naming

pytestmark = pytest.mark.timeout(1500)

# The only failure a surge may cause: admission control refusing what a pod cannot take.
SHED = "RESOURCE_EXHAUSTED"
POLICY_LOADED = "mailwarden_filter_policy_loaded_timestamp_seconds"
# The long profile's scale-down: the rendered default (300 s) is shortened on the policy.
SCALE_DOWN_STABILIZATION_SECONDS = 30


def hpa_status(e2e: E2E) -> dict:
    return e2e.kube.json("get", "hpa", e2e.workload).get("status") or {}


def cpu_utilization(status: dict) -> int | None:
    for item in status.get("currentMetrics") or []:
        if item.get("type") == "Resource" and item["resource"]["name"] == "cpu":
            return item["resource"]["current"].get("averageUtilization")
    return None


def epoch(stamp: str | None) -> float | None:
    """An API server timestamp (RFC 3339, whole seconds) as wall-clock seconds."""
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def condition_time(pod: dict[str, Any], kind: str) -> float | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind and cond["status"] == "True":
            return epoch(cond.get("lastTransitionTime"))
    return None


def started_time(pod: dict[str, Any]) -> float | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        running = (status.get("state") or {}).get("running")
        if running:
            return epoch(running.get("startedAt"))
    return None


class SurgeWatch:
    """Samples the HPA, the filter pods and each added pod's request counter about once a
    second while the surge runs, keeping the first wall-clock time of every step."""

    def __init__(self, e2e: E2E, before: set[str], target: int, replicas: int) -> None:
        self.e2e, self.before, self.target, self.replicas = e2e, before, target, replicas
        self.first: dict[str, float] = {}
        self.pods: dict[str, dict[str, float | None]] = {}
        self.utilization: list[tuple[float, int | None, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "SurgeWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _mark(self, step: str, at: float | None = None) -> None:
        self.first.setdefault(step, at if at is not None else time.time())

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self._sample()
            except (KubectlError, KeyError, ValueError) as exc:  # one sample lost, not the run
                print(f"surge watch: sample failed: {exc}")

    def _sample(self) -> None:
        now = time.time()
        status = hpa_status(self.e2e)
        util = cpu_utilization(status)
        self.utilization.append((round(now, 1), util, status.get("desiredReplicas", 0)))
        if util is not None and util > self.target:
            self._mark("HPA reads CPU over its target")
        if status.get("desiredReplicas", 0) > self.replicas:
            self._mark("HPA wants more replicas")
        for pod in self.e2e.filter_pods(ready_only=False):
            name = pod["metadata"]["name"]
            if name in self.before or pod["metadata"].get("deletionTimestamp"):
                continue
            seen = self.pods.setdefault(name, {"first call": None})
            seen["created"] = epoch(pod["metadata"].get("creationTimestamp"))
            seen["scheduled"] = condition_time(pod, "PodScheduled")
            seen["started"] = started_time(pod)
            seen["ready"] = condition_time(pod, "Ready")
            if seen["ready"] and seen["first call"] is None:
                text = self.e2e.kube.raw(f"/api/v1/namespaces/{self.e2e.namespace}/pods/"
                                         f"{name}:{naming.METRICS_PORT}/proxy/metrics")
                seen["policy compiled"] = metric(text, POLICY_LOADED) or None
                if metric(text, "mailwarden_filter_requests_total", method="Classify") > 0:
                    seen["first call"] = now

    def breakdown(self, onset: float) -> dict[str, float | None]:
        """Seconds after the surge's onset, for the first added pod to serve a call."""
        out: dict[str, float | None] = {k: round(v - onset, 1) for k, v in self.first.items()}
        served = [p for p in self.pods.values() if p.get("first call")]
        if not served:
            return out
        pod = min(served, key=lambda p: p["first call"] or 0)
        for step, key in (("pod created (ReplicaSet)", "created"),
                          ("pod scheduled", "scheduled"),
                          ("container started (node agent)", "started"),
                          # The server's gauge (its clock, sub-second; the latest of
                          # its workers); the API's times are whole seconds.
                          ("policy loaded and compiled (pod's gauge)", "policy compiled"),
                          ("pod Ready (policy compiled, probe passed)", "ready"),
                          ("first call answered by an added pod", "first call")):
            value = pod.get(key)
            out[step] = round(value - onset, 1) if value else None
        return out


def test_hpa_scales_the_filter_pods_up_under_a_surge(e2e: E2E) -> None:
    e2e.wait_policy_settled()
    hpa = e2e.kube.json("get", "hpa", e2e.workload)
    minimum, maximum = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    target = hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"]
    # metrics-server reports pod CPU about a minute after pods start.
    wait_for(lambda: cpu_utilization(hpa_status(e2e)) is not None, 600,
             "the HPA to read CPU utilization from metrics-server", interval=5)
    start = hpa_status(e2e)
    before = start.get("currentReplicas", minimum)
    assert before < maximum, f"already at maxReplicas ({start})"
    old_pods = {p["metadata"]["name"] for p in e2e.filter_pods(ready_only=False)}

    # Unthrottled load from two pods, several threads each: far more than `before` pods
    # serve. The client's default deadline, as a sender runs it.
    watch = SurgeWatch(e2e, old_pods, target, before).start()
    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=12, rate=0, parallelism=2,
                   deadline=5.0).start()
    try:
        scaled = wait_for(lambda: (lambda s: s if s.get("desiredReplicas", 0) > before
                                   else None)(hpa_status(e2e)),
                          600, f"the HPA to want more than {before} replicas", interval=2)
        want = scaled["desiredReplicas"]
        wait_for(lambda: len(e2e.filter_pods()) >= want, 600,
                 f"{want} ready filter pods", interval=2)
        sp = wait_for(lambda: (lambda s: s if s["status"].get("readyReplicas", 0) >= want
                               else None)(e2e.spampolicy()), 300,
                      "the SpamPolicy status to count the new pods", interval=2)
        wait_for(lambda: any(p.get("first call") for p in watch.pods.values()), 120,
                 "an added pod to answer a call", interval=1)
    finally:
        summary = load.stop()
        watch.stop()
    onset = min(p["started_wall"] for p in summary["pods"])
    steps = watch.breakdown(onset)
    shed = summary["codes"].get(SHED, 0)
    other = {code: n for code, n in summary["codes"].items() if code != SHED}
    figures.record("surge -> HPA scale-up", replicas=[before, want], target_cpu=target,
                   timeline=steps, answered=summary["ok"], failed=summary["failed"],
                   codes=summary["codes"], shed=shed,
                   latency_ms=[p["latency_ms"] for p in summary["pods"]],
                   utilization=watch.utilization[:120])
    print(f"\nHPA: {before} -> {want} replicas (CPU target {target}%, read "
          f"{cpu_utilization(scaled)}%); seconds after the surge's onset: " +
          ", ".join(f"{k} {v}" for k, v in steps.items()) +
          f"; SpamPolicy readyReplicas {sp['status']['readyReplicas']}; shed ({SHED}) "
          f"{shed}; {describe_load(summary)}")
    assert want > before and want > minimum
    assert not other, summary["failures"]
    assert steps.get("first call answered by an added pod") is not None, watch.pods
    if figures.long_profile():
        scale_down(e2e, before)


def scale_down(e2e: E2E, replicas: int) -> None:
    """The surge is over: the HPA returns to `replicas` while a light load keeps calling,
    and no call fails (old pods drain: preStop, NOT_SERVING, grace)."""
    e2e.kube.merge_patch("spampolicy", e2e.policy, {"spec": {"autoscaling": {
        "scaleDownStabilizationSeconds": SCALE_DOWN_STABILIZATION_SECONDS}}})
    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=4, rate=40).start()
    began = time.monotonic()
    try:
        wait_for(lambda: hpa_status(e2e).get("desiredReplicas") == replicas, 900,
                 f"the HPA to want {replicas} replicas again", interval=5)
        wanted = time.monotonic() - began
        wait_for(lambda: len(e2e.filter_pods(ready_only=False)) == replicas, 600,
                 f"{replicas} filter pods left", interval=2)
        done = time.monotonic() - began
        load.wait_more_answers(100)
    finally:
        summary = load.stop()
        # Back to the default (null removes the field; the CRD's default applies).
        e2e.kube.merge_patch("spampolicy", e2e.policy, {"spec": {"autoscaling": {
            "scaleDownStabilizationSeconds": None}}})
    figures.record("surge over -> HPA scale-down", replicas=replicas,
                   stabilization_seconds=SCALE_DOWN_STABILIZATION_SECONDS,
                   timeline={"HPA wants the minimum": round(wanted, 1),
                             "extra pods gone": round(done, 1)},
                   answered=summary["ok"], failed=summary["failed"], codes=summary["codes"],
                   latency_ms=[p["latency_ms"] for p in summary["pods"]])
    print(f"scale-down to {replicas}: the HPA wanted it after {wanted:.0f} s, extra pods gone "
          f"after {done:.0f} s (stabilization {SCALE_DOWN_STABILIZATION_SECONDS} s); "
          f"{describe_load(summary)}")
    assert summary["failed"] == 0, summary["failures"]
