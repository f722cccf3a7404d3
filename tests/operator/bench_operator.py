"""Operator benchmarks against the KMock emulator (figures, not pass/fail tests).

    python -m tests.operator.bench_operator reconcile --policies 100
    python -m tests.operator.bench_operator stores --stores 100
    python -m tests.operator.bench_operator takeover [--lifetimes 15 60] [--rounds 2]

`reconcile`: one operator; N SpamPolicies created at once; prints the time until every one
is Ready (all children rendered and applied, status written) and the mean reconcile time.

`stores`: the same for N UnsubscribeStores (PostgreSQL, one shared DSN Secret; each gets a
generated signing key, a Deployment, two Services, an HPA and a PDB).

`takeover`: how long reconciliation stops when the active replica dies, for the two HA
options: kopf peering (two operator processes, distinct priorities) with several peering
lifetimes, and a Lease election (the kubernetes client's `leaderelection` with client-go's
default timings: lease 15 s, renew deadline 10 s, retry 2 s). Measured after SIGKILL (a
crash or node loss) and SIGTERM (a rolling update or drain).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from mailwarden_operator.common.kube import CONFIGMAPS, SPAMPOLICIES, Resource
from tests.operator.conftest import (Cluster, FakeDeploymentController, OperatorProcess,
                                     condition, example_policy, model_configmap, wait_for)
from tests.operator.emulator import EmulatorThread

NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)


def _ready(cluster: Cluster, ns: str, name: str) -> bool:
    ready = condition(cluster.kube.get(SPAMPOLICIES, ns, name), "Ready")
    return bool(ready and ready["status"] == "True")


def bench_reconcile(policies: int) -> None:
    with EmulatorThread() as emulator, tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(emulator)
        with FakeDeploymentController(cluster.kube, interval=0.2):
            operator = OperatorProcess(cluster, Path(tmp), "--standalone", resync=3600)
            try:
                operator.start()
                cluster.kube.create(CONFIGMAPS, "bench", model_configmap("bench"))
                started = time.monotonic()
                for i in range(policies):
                    cluster.kube.create(SPAMPOLICIES, "bench",
                                        example_policy("bench", f"policy-{i:03d}"))
                created = time.monotonic() - started
                pending = {f"policy-{i:03d}" for i in range(policies)}
                while pending:
                    pending = {n for n in pending if not _ready(cluster, "bench", n)}
                    if time.monotonic() - started > 900:
                        raise SystemExit(f"{len(pending)} policies not Ready after 900 s")
                    time.sleep(0.5)
                total = time.monotonic() - started
                count = operator.metric("mailwarden_operator_reconcile_duration_seconds_count")
                seconds = operator.metric("mailwarden_operator_reconcile_duration_seconds_sum")
                writes = operator.metric("mailwarden_operator_api_writes_total")
                print(f"{policies} SpamPolicies: created in {created:.1f} s, all Ready after "
                      f"{total:.1f} s ({policies / total:.1f} policies/s); {int(count)} "
                      f"reconciles, mean {seconds / max(count, 1) * 1000:.0f} ms; "
                      f"{int(writes)} API writes")
            finally:
                operator.stop()


def bench_stores(stores: int) -> None:
    import base64

    from mailwarden_operator.common.kube import SECRETS, UNSUBSCRIBESTORES

    def ready(name: str) -> bool:
        c = condition(cluster.kube.get(UNSUBSCRIBESTORES, "bench", name), "Ready")
        return bool(c and c["status"] == "True")

    with EmulatorThread() as emulator, tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(emulator)
        with FakeDeploymentController(cluster.kube, interval=0.2):
            operator = OperatorProcess(cluster, Path(tmp), "--standalone", resync=3600)
            try:
                operator.start()
                cluster.kube.create(SECRETS, "bench", {
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "pg-app", "namespace": "bench"},
                    "data": {"dsn": base64.b64encode(b"host=pg dbname=mail").decode()}})
                started = time.monotonic()
                for i in range(stores):
                    cluster.kube.create(UNSUBSCRIBESTORES, "bench", {
                        "apiVersion": "mailwarden.dev/v1alpha1", "kind": "UnsubscribeStore",
                        "metadata": {"name": f"store-{i:03d}", "namespace": "bench"},
                        "spec": {"storage": {"type": "postgres", "postgres": {
                            "dsnSecretRef": {"name": "pg-app"}}}}})
                created = time.monotonic() - started
                pending = {f"store-{i:03d}" for i in range(stores)}
                while pending:
                    pending = {n for n in pending if not ready(n)}
                    if time.monotonic() - started > 900:
                        raise SystemExit(f"{len(pending)} stores not Ready after 900 s")
                    time.sleep(0.5)
                total = time.monotonic() - started
                count = operator.metric("mailwarden_operator_reconcile_duration_seconds_count")
                seconds = operator.metric("mailwarden_operator_reconcile_duration_seconds_sum")
                writes = operator.metric("mailwarden_operator_api_writes_total")
                keys = operator.metric("mailwarden_operator_signing_keys_generated_total")
                print(f"{stores} UnsubscribeStores: created in {created:.1f} s, all Ready "
                      f"after {total:.1f} s ({stores / total:.1f} stores/s); {int(count)} "
                      f"reconciles, mean {seconds / max(count, 1) * 1000:.0f} ms; "
                      f"{int(writes)} API writes; {int(keys)} signing keys generated; "
                      f"load average {os.getloadavg()[0]:.1f}")
            finally:
                operator.stop()


def _peering_takeover(lifetime: int, sig: int) -> float:
    with EmulatorThread() as emulator, tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(emulator)
        with FakeDeploymentController(cluster.kube):
            args = ("--peering", "mailwarden", "--peering-lifetime", str(lifetime))
            active = OperatorProcess(cluster, Path(tmp), *args, "--priority", "2",
                                     name="active", resync=3600)
            standby = OperatorProcess(cluster, Path(tmp), *args, "--priority", "1",
                                      name="standby", resync=3600)
            try:
                active.start()
                standby.start()
                cluster.kube.create(CONFIGMAPS, "ha", model_configmap("ha"))
                cluster.kube.create(SPAMPOLICIES, "ha", example_policy("ha", "first"))
                wait_for(lambda: _ready(cluster, "ha", "first"), 60, "first Ready")
                # Kill at a random point of the keep-alive cycle, as a crash would.
                time.sleep(1 + (time.time_ns() % 1000) / 1000 * lifetime / 2)
                active.stop(signum=sig)
                stopped = time.monotonic()
                cluster.kube.create(SPAMPOLICIES, "ha", example_policy("ha", "second"))
                wait_for(lambda: _ready(cluster, "ha", "second"), 3 * lifetime + 60,
                         "takeover", interval=0.05)
                return time.monotonic() - stopped
            finally:
                active.stop()
                standby.stop()


LEASE_CANDIDATE = textwrap.dedent("""
    import sys, time
    from kubernetes import client, config
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock
    config.load_kube_config(sys.argv[1])
    lock = LeaseLock("mailwarden-operator", "default", sys.argv[2])
    def lead():
        print("LEADING", time.time(), flush=True)
        while True:
            time.sleep(1)
    leaderelection.LeaderElection(electionconfig.Config(
        lock, lease_duration=15, renew_deadline=10, retry_period=2,
        onstarted_leading=lead, onstopped_leading=lambda: None)).run()
""")


def _lease_takeover(sig: int) -> float:
    with EmulatorThread() as emulator, tempfile.TemporaryDirectory() as tmp:
        Cluster(emulator)
        kubeconfig = emulator.kubeconfig(Path(tmp))
        script = Path(tmp) / "candidate.py"
        script.write_text(LEASE_CANDIDATE)
        procs = {}
        try:
            for who in ("a", "b"):
                procs[who] = subprocess.Popen(
                    [sys.executable, str(script), str(kubeconfig), who],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                    start_new_session=True)
                if who == "a":
                    assert procs["a"].stdout.readline().startswith("LEADING")
            time.sleep(1 + (time.time_ns() % 1000) / 1000 * 5)
            os.killpg(procs["a"].pid, sig)
            stopped = time.time()
            line = procs["b"].stdout.readline()
            return float(line.split()[1]) - stopped
        finally:
            for proc in procs.values():
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)


def bench_takeover(lifetimes: list[int], rounds: int) -> None:
    for sig in (signal.SIGKILL, signal.SIGTERM):
        name = signal.Signals(sig).name
        for lifetime in lifetimes:
            figures = [_peering_takeover(lifetime, sig) for _ in range(rounds)]
            print(f"kopf peering, lifetime {lifetime:>2} s, {name}: takeover "
                  + ", ".join(f"{f:.1f}" for f in figures) + " s")
        figures = [_lease_takeover(sig) for _ in range(rounds)]
        print(f"Lease election (15/10/2 s), {name}: takeover "
              + ", ".join(f"{f:.1f}" for f in figures) + " s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    rec = sub.add_parser("reconcile")
    rec.add_argument("--policies", type=int, default=100)
    stores = sub.add_parser("stores")
    stores.add_argument("--stores", type=int, default=100)
    take = sub.add_parser("takeover")
    take.add_argument("--lifetimes", type=int, nargs="+", default=[15, 60])
    take.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.what == "reconcile":
        bench_reconcile(args.policies)
    elif args.what == "stores":
        bench_stores(args.stores)
    else:
        bench_takeover(args.lifetimes, args.rounds)


if __name__ == "__main__":
    main()
