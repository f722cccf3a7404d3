"""Canary rollouts on the real control plane (issue 18): figures, not a test.

    python -m tests.operator_cluster.bench_canary [--runs 3] [--canary-check 10] [--resync 60]

Starts the control plane, two process node agents (every filter pod is a real process), the
CRDs and the operator under the chart's RBAC with the given check interval and resync
period (the chart's defaults: 10 and 60), then, with live ham traffic spread over the
Service's ready endpoints (tests/operator_cluster/test_canary.py's Traffic):

- `--runs` times, in a fresh namespace: a policy change that REJECTs that ham, as a canary
  (one step, 50% of the pods); prints the seconds from its first REJECT to the canary
  Deployment scaled to 0, the calls and the failed calls;
- `--runs` times, the same change while other ham flows, the REJECTed ham starting only once
  the step is under way: what the periodic check (`--canary-check`) bounds;
- once: a good change through two steps (34% then 50% of the pods, held `--hold` seconds
  each) to promotion; prints the time of each step, the total, and the failed calls.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.cluster import ControlPlane
from e2e.nodes import ClusterInfo, NodeAgents
from mailwarden.filter.v1 import filter_pb2
from mailwarden_operator.spampolicy import naming
from tests.operator_cluster.conftest import NODES, free_workdir
from tests.operator_cluster.kubeapi import install_crds, wait_for
from tests.operator_cluster.operator_proc import OperatorOnCluster
from tests.operator_cluster.test_canary import HAM, LUNCH, PHARMACY, Traffic, policy
from tests.operator_cluster.test_shadow import apply, status


def canary_gone(cp: ControlPlane, namespace: str) -> bool:
    """The canary Deployment retired (scaled to 0; the operator may not delete it)."""
    return client.AppsV1Api(cp.api_client()).read_namespaced_deployment(
        naming.canary_name("mail"), namespace).spec.replicas == 0


def first_policy(cp: ControlPlane, namespace: str, **options: Any) -> tuple[str, Traffic]:
    client.CoreV1Api(cp.api_client()).create_namespace({"metadata": {"name": namespace}})
    apply(cp, policy(namespace, **options))
    first = wait_for("the first policy live", lambda: status(cp, namespace).get(
        "policyHash"), timeout=180)
    traffic = Traffic(cp, namespace)
    traffic.start()
    wait_for("ham answered", lambda: len(traffic.answers) >= 20, timeout=60)
    return first, traffic


def bad_canary(cp: ControlPlane, namespace: str) -> tuple[float, int, int]:
    """(seconds from the first REJECT to the canary retired, calls, failed calls)."""
    _, traffic = first_policy(cp, namespace)
    try:
        apply(cp, policy(namespace, LUNCH))
        first_reject = wait_for("the canary pod answering", lambda: next(
            (a[0] for a in traffic.answers if a[2] == filter_pb2.REJECT), None), timeout=180)
        wait_for("the canary retired", lambda: canary_gone(cp, namespace)
                 and status(cp, namespace).get("lastRollback"), timeout=180, interval=0.2)
        seconds = time.monotonic() - first_reject
        time.sleep(5)  # traffic goes on while the canary pods drain
    finally:
        traffic.stopping.set()
        traffic.join(timeout=30)
    return seconds, len(traffic.answers), len(traffic.failures)


OTHER_HAM = b"Subject: minutes\r\n\r\nThe minutes of today's meeting are attached.\r\n"


def late_bad_canary(cp: ControlPlane, namespace: str) -> tuple[float, int, int]:
    """A canary that looks fine until the mail changes: the ham it REJECTs only starts once
    its step is under way (no Deployment event left to trigger a reconcile), so only the
    periodic check catches it. (seconds from the first REJECT to the canary retired, calls,
    failed calls)."""
    _, traffic = first_policy(cp, namespace)
    traffic.message = OTHER_HAM
    try:
        apply(cp, policy(namespace, LUNCH))
        wait_for("the step under way", lambda: (status(cp, namespace).get("canary") or {}
                                                ).get("stepStartedAt"), timeout=180)
        time.sleep(5)
        traffic.message = HAM  # the ham LUNCH REJECTs
        first_reject = wait_for("the canary pod REJECTing", lambda: next(
            (a[0] for a in traffic.answers if a[2] == filter_pb2.REJECT), None), timeout=60)
        wait_for("the canary retired", lambda: canary_gone(cp, namespace)
                 and status(cp, namespace).get("lastRollback"), timeout=180, interval=0.2)
        seconds = time.monotonic() - first_reject
        time.sleep(5)
    finally:
        traffic.stopping.set()
        traffic.join(timeout=30)
    return seconds, len(traffic.answers), len(traffic.failures)


def good_canary(cp: ControlPlane, namespace: str, hold: int) -> None:
    steps = [{"weight": 34, "holdSeconds": hold}, {"weight": 50, "holdSeconds": hold}]
    options = {"steps": steps, "min_samples": 50}
    first, traffic = first_policy(cp, namespace, **options)
    try:
        started = time.monotonic()
        apply(cp, policy(namespace, PHARMACY, **options))
        marks: list[str] = []
        seen_steps: set[int] = set()

        def promoted() -> bool:
            now = status(cp, namespace)
            step = (now.get("canary") or {}).get("step")
            if step is not None and step not in seen_steps:
                seen_steps.add(step)
                marks.append(f"step {step + 1} at {time.monotonic() - started:.1f} s")
            if (now.get("canary") or {}).get("promoted") and -1 not in seen_steps:
                seen_steps.add(-1)
                marks.append(f"promoted at {time.monotonic() - started:.1f} s")
            return bool(now.get("policyHash") not in (None, first) and "canary" not in now
                        and canary_gone(cp, namespace))

        wait_for("the good canary promoted", promoted, timeout=hold * 2 + 600, interval=0.5)
        total = time.monotonic() - started
        rolled_back = status(cp, namespace).get("lastRollback")
    finally:
        traffic.stopping.set()
        traffic.join(timeout=30)
    print(f"good canary: live on every pod {total:.1f} s after the change "
          f"({', '.join(marks)}); {len(traffic.answers)} calls, {len(traffic.failures)} "
          f"failed; rolled back: {rolled_back}")


def run(runs: int, canary_check: float, resync: float, hold: int,
        keep: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-canary-") as tmp:
        workdir, pods, services = free_workdir(Path(keep or tmp))
        cp = ControlPlane(workdir / "cp", cluster_cidr=pods, service_cidr=services)
        cp.start()
        agents = operator = None
        try:
            agents = NodeAgents(workdir / "nodes", ClusterInfo.from_control_plane(cp), NODES)
            agents.start()
            install_crds(cp)
            operator = OperatorOnCluster(cp, workdir, "--canary-check-seconds",
                                         str(canary_check), resync=resync).start()
            figures = []
            for i in range(runs):
                seconds, calls, failed = bad_canary(cp, f"bad-{i}")
                figures.append(seconds)
                print(f"bad canary {i + 1}: rolled back {seconds:.1f} s after its first "
                      f"REJECT; {calls} calls, {failed} failed")
            print(f"bad canary, {runs} runs, check every {canary_check:g} s: median "
                  f"{statistics.median(figures):.1f} s, max {max(figures):.1f} s")
            late = []
            for i in range(runs):
                seconds, calls, failed = late_bad_canary(cp, f"late-{i}")
                late.append(seconds)
                print(f"late bad canary {i + 1} (REJECTs begin mid-step): rolled back "
                      f"{seconds:.1f} s after its first REJECT; {calls} calls, {failed} "
                      "failed")
            print(f"late bad canary, {runs} runs, check every {canary_check:g} s: median "
                  f"{statistics.median(late):.1f} s, max {max(late):.1f} s")
            good_canary(cp, "good", hold)
        finally:
            if operator is not None:
                operator.stop()
            if agents is not None:
                agents.stop()
            cp.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="bad canaries to roll back")
    parser.add_argument("--canary-check", type=float, default=10.0,
                        help="the operator's --canary-check-seconds (the chart's default)")
    parser.add_argument("--resync", type=float, default=60.0,
                        help="the operator's resync period (the chart's default: 60)")
    parser.add_argument("--hold", type=int, default=20,
                        help="holdSeconds of each step of the good canary")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR and keep it (logs) afterwards")
    args = parser.parse_args()
    run(args.runs, args.canary_check, args.resync, args.hold, args.keep)


if __name__ == "__main__":
    main()
