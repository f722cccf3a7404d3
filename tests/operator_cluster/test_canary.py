"""rollout.strategy Canary on the real API server with the real operator and real filter
pods (issue 18): a policy change that REJECTs ham serves on a canary Deployment behind the
same Service, live test traffic (spread over the Service's ready endpoints, as the Service
does) makes the REJECT-rate guard cross, and the operator rolls it back by itself: the
canary Deployment is scaled to 0, the previous policy never stopped serving, no call failed,
and status, condition and a Warning Event name the guard and the figures.

A good change goes through every step (short holds) to promotion: the main Deployment then
serves it, the canary is retired, and no call failed.

It prints the time from the bad step's first REJECT to the rollback; repeated runs, the
production check interval and longer holds are in bench_canary.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import pytest
from kubernetes import client

from e2e.cluster import ControlPlane
from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from mailwarden_operator.spampolicy import naming
from tests.operator_cluster.kubeapi import wait_for
from tests.operator_cluster.operator_proc import OperatorOnCluster
from tests.operator_cluster.test_shadow import apply, status, template_hashes

pytestmark = pytest.mark.slow

HAM = b"Subject: noon\r\n\r\nShall we have lunch at noon? Bring the slides.\r\n"
LUNCH = {"name": "LUNCH", "target": "body", "pattern": "lunch", "score": 30}
PHARMACY = {"name": "PHARMACY", "target": "body", "pattern": "pharmacy", "score": 20}


# Held long: only a guard can end this step.
ONE_LONG_STEP = [{"weight": 50, "holdSeconds": 3600}]


def policy(namespace: str, *extra: dict[str, Any],
           steps: list[dict[str, Any]] = ONE_LONG_STEP, min_samples: int = 20,
           max_replicas: int = 2) -> dict[str, Any]:
    return {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
            "metadata": {"name": "mail", "namespace": namespace},
            "spec": {"replicas": {"min": 1, "max": max_replicas},
                     "policy": {"rules": [{"name": "R1", "target": "body",
                                           "pattern": "viagra", "score": 5}, *extra]},
                     "rollout": {"strategy": "Canary", "canary": {
                         "steps": steps, "guards": {"minSamples": min_samples}}}}}


class Traffic(threading.Thread):
    """Classify HAM without pause, round-robin over the ready endpoints of the policy's
    Service (re-read every 0.3 s), recording every answer and every failed call."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        super().__init__(name="canary-traffic", daemon=True)
        self.discovery = client.DiscoveryV1Api(cp.api_client())
        self.namespace = namespace
        # (time, pod IP, action, hash of the policy that answered)
        self.answers: list[tuple[float, str, int, str]] = []
        self.failures: list[str] = []
        self.first_seen: dict[str, float] = {}  # pod IP -> when it was first a ready endpoint
        self.stopping = threading.Event()
        self.message = HAM  # what it sends (a benchmark switches it mid-run)

    def endpoints(self) -> list[str]:
        slices = self.discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector="kubernetes.io/service-name="
            + naming.workload_name("mail")).items
        return sorted(address for s in slices for e in s.endpoints or []
                      if (e.conditions and e.conditions.ready) for address in e.addresses)

    def run(self) -> None:
        channels: dict[str, grpc.Channel] = {}
        ips: list[str] = []
        refreshed, turn = 0.0, 0
        try:
            while not self.stopping.is_set():
                if time.monotonic() - refreshed > 0.3:
                    ips, refreshed = self.endpoints(), time.monotonic()
                    for ip in ips:
                        self.first_seen.setdefault(ip, refreshed)
                if not ips:
                    time.sleep(0.1)
                    continue
                ip = ips[turn % len(ips)]
                turn += 1
                if ip not in channels:
                    channels[ip] = grpc.insecure_channel(f"{ip}:{naming.GRPC_PORT}")
                try:
                    answer = filter_pb2_grpc.FilterStub(channels[ip]).Classify(
                        filter_pb2.ClassifyRequest(request_id=f"c{turn}",
                                                   message=self.message),
                        timeout=10)
                    self.answers.append((time.monotonic(), ip, answer.action,
                                         answer.policy_hash))
                except grpc.RpcError as exc:
                    self.failures.append(f"{ip}: {exc.code()} {exc.details()}")
                time.sleep(0.02)
        finally:
            for channel in channels.values():
                channel.close()


def test_a_canary_that_rejects_ham_is_rolled_back_automatically(
        control_plane: ControlPlane, operator: OperatorOnCluster, namespace: str) -> None:
    apps = client.AppsV1Api(control_plane.api_client())
    apply(control_plane, policy(namespace))
    first = wait_for("the first policy live", lambda: status(
        control_plane, namespace).get("policyHash"), timeout=120)
    traffic = Traffic(control_plane, namespace)
    traffic.start()
    try:
        wait_for("ham answered", lambda: len(traffic.answers) >= 5, timeout=30)
        assert {a[2] for a in traffic.answers} == {filter_pb2.ACCEPT}

        apply(control_plane, policy(namespace, LUNCH))
        candidate = wait_for("the canary started", lambda: (
            status(control_plane, namespace).get("canary") or {}).get("policyHash"),
            timeout=60)
        assert candidate != first
        try:
            first_reject = wait_for("the canary pod answering", lambda: next(
                (a[0] for a in traffic.answers if a[2] == filter_pb2.REJECT), None),
                timeout=120)
        except AssertionError:
            pods = client.CoreV1Api(control_plane.api_client()).list_namespaced_pod(
                namespace).items
            raise AssertionError("no REJECT: " + repr([
                (p.metadata.name, p.status.pod_ip, p.status.phase,
                 [(c.type, c.status) for c in p.status.conditions or []]) for p in pods])
                + f" endpoints {traffic.endpoints()} answers {traffic.answers[-5:]} "
                f"status {status(control_plane, namespace)} operator {operator.tail(30)}")
        rollback = wait_for("the rollback", lambda: status(
            control_plane, namespace).get("lastRollback"), timeout=60)

        wait_for("the canary Deployment scaled to 0", lambda: apps.read_namespaced_deployment(
            naming.canary_name("mail"), namespace).spec.replicas == 0, timeout=30,
            interval=0.2)
        rolled_back = time.monotonic()
        # Once the canary pods left the Service, every answer is the previous policy's.
        canary_ips = {a[1] for a in traffic.answers if a[2] == filter_pb2.REJECT}
        wait_for("the canary pods out of the endpoints",
                 lambda: not canary_ips & set(traffic.endpoints()), timeout=60)
        # The traffic's own view of the endpoints is up to 0.3 s old (and a call to a
        # draining canary pod still answers, with its policy): count from a moment later.
        time.sleep(1.0)
        mark = len(traffic.answers)
        wait_for("answers after the rollback", lambda: len(traffic.answers) >= mark + 20,
                 timeout=30)
    finally:
        traffic.stopping.set()
        traffic.join(timeout=30)

    assert traffic.failures == [], traffic.failures[:5]
    assert {a[2] for a in traffic.answers[mark:]} == {filter_pb2.ACCEPT}
    assert (rollback["policyHash"], rollback["stablePolicyHash"], rollback["guard"]) == (
        candidate, first, "rejectRateIncrease"), rollback
    assert rollback["observed"] > rollback["limit"] == 0.05
    assert template_hashes(control_plane, namespace) == (first, None)  # main: never touched
    now = status(control_plane, namespace)
    assert "canary" not in now and now["policyHash"] == first
    condition = next(c for c in now["conditions"] if c["type"] == "CanaryRolledBack")
    assert (condition["status"], condition["reason"]) == ("True", "GuardCrossed")
    assert "rejectRateIncrease" in condition["message"]
    events = client.CoreV1Api(control_plane.api_client()).list_namespaced_event(
        namespace, field_selector="involvedObject.name=mail").items
    warnings = [e for e in events if e.reason == "CanaryRolledBack"]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    assert "rejectRate=" in warnings[0].message

    rejects = sum(1 for a in traffic.answers if a[2] == filter_pb2.REJECT)
    in_service = min(traffic.first_seen[ip] for ip in canary_ips)
    print(f"\ncanary rollback: {rolled_back - first_reject:.1f} s from the first REJECT to "
          f"the canary Deployment scaled to 0, {rolled_back - in_service:.1f} s from its pod "
          f"in the Service's ready endpoints (status: {rollback['secondsAfterStepStart']} s "
          f"after the step start); {len(traffic.answers)} calls, {rejects} REJECTed by the "
          f"canary, {len(traffic.failures)} failed; guard {rollback['guard']} "
          f"{rollback['observed']} > {rollback['limit']}")


def test_a_good_canary_promotes_through_every_step(
        control_plane: ControlPlane, operator: OperatorOnCluster, namespace: str) -> None:
    apps = client.AppsV1Api(control_plane.api_client())
    steps = [{"weight": 34, "holdSeconds": 3}, {"weight": 50, "holdSeconds": 3}]
    apply(control_plane, policy(namespace, steps=steps, min_samples=10))
    first = wait_for("the first policy live", lambda: status(
        control_plane, namespace).get("policyHash"), timeout=120)
    traffic = Traffic(control_plane, namespace)
    traffic.start()
    seen_steps: list[int] = []
    try:
        wait_for("ham answered", lambda: len(traffic.answers) >= 5, timeout=30)
        started = time.monotonic()
        apply(control_plane, policy(namespace, PHARMACY, steps=steps, min_samples=10))

        def promoted() -> bool:
            now = status(control_plane, namespace)
            step = (now.get("canary") or {}).get("step")
            if step is not None and step not in seen_steps:
                seen_steps.append(step)
            return now.get("policyHash") not in (None, first) and "canary" not in now

        wait_for("the good canary promoted", promoted, timeout=240, interval=0.3)
        took = time.monotonic() - started
        new = status(control_plane, namespace)["policyHash"]
        wait_for("the canary Deployment scaled to 0", lambda: apps.read_namespaced_deployment(
            naming.canary_name("mail"), namespace).spec.replicas == 0, timeout=60)
        # Every ready endpoint now serves the new policy (the main Deployment rolled out).
        wait_for("only the new policy answering", lambda: len(traffic.answers) > 20 and {
            a[3] for a in traffic.answers[-20:]} == {new}, timeout=120)
    finally:
        traffic.stopping.set()
        traffic.join(timeout=30)

    assert traffic.failures == [], traffic.failures[:5]
    assert seen_steps == [0, 1], seen_steps
    assert {a[3] for a in traffic.answers} == {first, new}  # the canary served the change
    now = status(control_plane, namespace)
    assert "lastRollback" not in now, now["lastRollback"]
    assert template_hashes(control_plane, namespace) == (new, None)
    print(f"\ngood canary: promoted through {len(steps)} steps {took:.1f} s after the change; "
          f"{len(traffic.answers)} calls, {len(traffic.failures)} failed")
