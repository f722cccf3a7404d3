"""Operator cost at scale on the real control plane (issue 13 item 18): figures, not a test.

    python -m tests.operator_cluster.bench_scale --policies 200 [--resync 60] [--nodes]

Starts the control plane (e2e/cluster, audit log recording every request of the operator's
ServiceAccount), the CRDs and the operator under the chart's RBAC; creates N SpamPolicies
(replicas 1-2, a three-rule policy) in one namespace at once, and prints:

- the time until every one is reconciled (children created, status written for generation
  1) and, with `--nodes` (two process node agents: every filter pod is a real process, so
  mind the memory: ~70 MB each), until every one is Ready;
- the operator's API requests: during the creation burst, and per reconcile over the
  following resync rounds, by verb and resource;
- the operator's resident memory (VmRSS, VmHWM) after the burst and after the rounds.

Without `--nodes` the pods stay Pending (no node), which costs the operator nothing more:
Deployment status events are what a running cluster adds on top.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.cluster import ControlPlane
from e2e.cluster import controlplane as controlplane_module
from tests.operator_cluster.conftest import AUDIT_POLICY, NODES, free_workdir
from tests.operator_cluster.kubeapi import install_crds, wait_for
from tests.operator_cluster.operator_proc import AuditLog, OperatorOnCluster

NAMESPACE = "scale"


def policy(i: int) -> dict[str, Any]:
    return {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
            "metadata": {"name": f"p{i:04d}", "namespace": NAMESPACE},
            "spec": {"replicas": {"min": 1, "max": 2},
                     "policy": {"rules": [
                         {"name": "R1", "target": "body", "pattern": "viagra", "score": 5},
                         {"name": "R2", "target": "header", "header": "Subject",
                          "pattern": "(?i)winner", "score": 2},
                         {"name": "R3", "target": "uri", "pattern": "^https?://\\d", "score": 1}]}}}


def memory(pid: int) -> dict[str, int]:
    """The operator process's resident memory now and at its peak, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024
    return out


def breakdown(events: list[Any]) -> str:
    counts = collections.Counter(f"{e.verb} {e.resource}" for e in events)
    return ", ".join(f"{k}: {v}" for k, v in counts.most_common(12))


def run(policies: int, resync: float, with_nodes: bool, rounds: int,
        keep: Path | None = None, informer_cache: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if keep is not None:
            tmp = str(keep)
        workdir, pods, services = free_workdir(Path(tmp))
        cp = ControlPlane(workdir / "cp", cluster_cidr=pods, service_cidr=services)
        default_policy = controlplane_module.AUDIT_POLICY
        controlplane_module.AUDIT_POLICY = AUDIT_POLICY
        try:
            cp.start()
        finally:
            controlplane_module.AUDIT_POLICY = default_policy
        agents = None
        operator = None
        try:
            if with_nodes:
                from e2e.nodes import ClusterInfo, NodeAgents
                agents = NodeAgents(workdir / "nodes", ClusterInfo.from_control_plane(cp),
                                    NODES)
                agents.start()
            install_crds(cp)
            core = client.CoreV1Api(cp.api_client())
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            extra = [] if informer_cache else ["--no-informer-cache"]
            operator = OperatorOnCluster(cp, workdir, *extra, resync=resync).start()
            assert operator.process is not None
            pid = operator.process.pid
            audit = AuditLog(cp)
            wait_for("the operator's first lists", lambda: audit.requests(operator.username),
                     timeout=60)
            time.sleep(3)
            print(f"operator idle: {memory(pid)} MiB")
            custom = client.CustomObjectsApi(cp.api_client())
            mark = audit.mark()
            started = time.monotonic()
            for i in range(policies):
                custom.create_namespaced_custom_object("mailwarden.dev", "v1alpha1", NAMESPACE,
                                                       "spampolicies", policy(i))
            created = time.monotonic() - started
            print(f"{policies} SpamPolicies created in {created:.1f} s")

            def items() -> list[dict[str, Any]]:
                return custom.list_namespaced_custom_object(
                    "mailwarden.dev", "v1alpha1", NAMESPACE, "spampolicies")["items"]

            def reconciled() -> int:
                return sum(1 for p in items()
                           if (p.get("status") or {}).get("observedGeneration") == 1)
            wait_for(f"all {policies} reconciled", lambda: reconciled() == policies,
                     timeout=max(600, policies * 6), interval=2)
            t_reconciled = time.monotonic() - started
            print(f"all reconciled (children + status) {t_reconciled:.1f} s after the first "
                  "create")
            if with_nodes:
                def ready() -> int:
                    return sum(1 for p in items() if any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in (p.get("status") or {}).get("conditions") or []))
                wait_for(f"all {policies} Ready", lambda: ready() == policies,
                         timeout=max(900, policies * 10), interval=5)
                print(f"all Ready {time.monotonic() - started:.1f} s after the first create")
            burst = audit.requests(operator.username, mark)
            print(f"burst: {len(burst)} operator requests "
                  f"({len(burst) / policies:.1f} per policy): {breakdown(burst)}")
            print(f"operator after the burst: {memory(pid)} MiB")

            before = operator.metric("mailwarden_operator_reconciles_total", trigger="resync")
            mark = audit.mark()
            started = time.monotonic()
            wait_for(f"{rounds} resync rounds", lambda: operator.metric(
                "mailwarden_operator_reconciles_total", trigger="resync") - before
                >= rounds * policies, timeout=rounds * resync * 3 + 120, interval=2)
            elapsed = time.monotonic() - started
            done = operator.metric("mailwarden_operator_reconciles_total",
                                   trigger="resync") - before
            steady = [e for e in audit.requests(operator.username, mark)
                      if "kopfpeerings" not in e.resource]
            dry = sum(1 for e in steady if e.dry_run)
            print(f"steady state: {done:.0f} resync reconciles in {elapsed:.0f} s, "
                  f"{len(steady)} requests ({len(steady) / max(done, 1):.2f} per reconcile): "
                  f"{breakdown(steady)}; {dry} of them dry runs")
            print(f"operator after {rounds} rounds: {memory(pid)} MiB")
        finally:
            if operator is not None:
                operator.stop()
            if agents is not None:
                agents.stop()
            cp.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--resync", type=float, default=60.0,
                        help="the operator's resync period (the chart's default: 60)")
    parser.add_argument("--rounds", type=int, default=2, help="resync rounds to count")
    parser.add_argument("--no-informer-cache", dest="informer_cache", action="store_false",
                        help="run the operator without its watch-fed caches (the 'before' "
                        "figures)")
    parser.add_argument("--nodes", action="store_true",
                        help="run the filter pods (two node agents) and wait for Ready")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR and keep it (logs, the audit log) afterwards")
    args = parser.parse_args()
    run(args.policies, args.resync, args.nodes, args.rounds, args.keep, args.informer_cache)


if __name__ == "__main__":
    main()
