"""Figures of the process node agent on the real control plane (docs/node-agent.md):

- pod start latency, bind -> Running -> Ready, for a trivial pod (a Python sleep with a
  tcpSocket readiness probe) and for `mailwarden serve` (gRPC readiness probe), seen by a
  watch (the API's timestamps have a one-second resolution);
- one agent's memory (RSS) and CPU at idle and with 20 pods.

    .venv/bin/python -m e2e.nodes.bench [--workdir DIR] [--pods 20] [--samples 5]

Needs root and the binaries (scripts/kube-build.sh, scripts/nodeagent-build.sh).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

from e2e.nodes import ClusterInfo, NodeAgents, NodeSpec, cluster_ranges
from mailwarden.wire import FILTER_GRPC_PORT

IMAGE = "ghcr.io/mailwarden/mailwarden:0.1.0"
SECURE = {"runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True}
SLEEPER = ("import socket, time; s = socket.socket(); s.bind(('', 8080)); s.listen(); "
           "time.sleep(3600)")
POLICY = {"thresholds": {"tag": 4, "quarantine": 12, "reject": 20},
          "rules": [{"name": "SUBJ", "target": "header", "header": "Subject",
                     "pattern": "(?i)money", "score": 2.0}]}


def trivial_pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                     "containers": [{"name": "c", "image": IMAGE, "securityContext": SECURE,
                                     "command": ["python3", "-c", SLEEPER],
                                     "readinessProbe": {"tcpSocket": {"port": 8080},
                                                        "periodSeconds": 1}}]}}


def serve_pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                     "volumes": [{"name": "policy", "configMap": {"name": "policy"}}],
                     "containers": [{
                         "name": "filter", "image": IMAGE, "securityContext": SECURE,
                         "args": ["serve", "--policy-dir", "/policy", "--workers", "1"],
                         "readinessProbe": {"grpc": {"port": FILTER_GRPC_PORT},
                                            "periodSeconds": 1},
                         "volumeMounts": [{"name": "policy", "mountPath": "/policy"}]}]}}


class Timeline:
    """When each pod was seen bound, Running and Ready (monotonic seconds)."""

    def __init__(self, core, namespace: str) -> None:
        from kubernetes import watch
        self.marks: dict[str, dict[str, float]] = {}
        self.lock = threading.Lock()
        self.stop = False
        self.w = watch.Watch()
        self.thread = threading.Thread(target=self._run, args=(core, namespace), daemon=True)
        self.thread.start()

    def _run(self, core, namespace: str) -> None:
        for event in self.w.stream(core.list_namespaced_pod, namespace, timeout_seconds=3600):
            p = event["object"]
            now = time.monotonic()
            with self.lock:
                m = self.marks.setdefault(p.metadata.name, {})
                if p.spec.node_name:
                    m.setdefault("bound", now)
                if p.status.phase == "Running":
                    m.setdefault("running", now)
                if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or []):
                    m.setdefault("ready", now)
            if self.stop:
                return

    def wait(self, names: list[str], timeout: float = 180) -> dict[str, dict[str, float]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all("ready" in self.marks.get(n, {}) for n in names):
                    return {n: dict(self.marks[n]) for n in names}
            time.sleep(0.05)
        raise TimeoutError(f"pods not Ready within {timeout} s: {names}")


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def usage_over(pid: int, seconds: float) -> tuple[float, int]:
    """(CPU % of one core, peak RSS MiB-bytes) over `seconds`."""
    cpu0, _ = proc_usage(pid)
    t0 = time.monotonic()
    peak = 0
    while time.monotonic() - t0 < seconds:
        peak = max(peak, proc_usage(pid)[1])
        time.sleep(0.5)
    cpu1, rss = proc_usage(pid)
    return 100 * (cpu1 - cpu0) / (time.monotonic() - t0), max(peak, rss)


def latencies(kind: str, marks: dict[str, dict[str, float]]) -> str:
    run = [m["running"] - m["bound"] for m in marks.values()]
    rdy = [m["ready"] - m["bound"] for m in marks.values()]
    return (f"{kind:<22} bind->Running median {statistics.median(run):.2f} s "
            f"(max {max(run):.2f}), bind->Ready median {statistics.median(rdy):.2f} s "
            f"(max {max(rdy):.2f}), n={len(marks)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--pods", type=int, default=20, help="pods on one node for the load figure")
    ap.add_argument("--samples", type=int, default=5, help="pods per latency figure")
    ap.add_argument("--window", type=float, default=30, help="seconds per CPU/RSS sample")
    args = ap.parse_args()
    from kubernetes import client

    from e2e.cluster import ControlPlane

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mw-nodes-bench-"))
    pods, services = cluster_ranges(workdir)
    with ControlPlane(workdir / "cp", cluster_cidr=pods, service_cidr=services) as cp:
        nodes = NodeAgents(workdir / "nodes", ClusterInfo.from_control_plane(cp),
                           [NodeSpec("node-a", "zone-a"), NodeSpec("node-b", "zone-b")])
        t0 = time.monotonic()
        nodes.start()
        print(f"2 nodes Ready {time.monotonic() - t0:.1f} s after start() (control plane up)")
        try:
            core = client.CoreV1Api(cp.api_client())
            ns = f"bench-{uuid.uuid4().hex[:6]}"
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            while True:
                try:
                    core.read_namespaced_service_account("default", ns)
                    break
                except client.ApiException:
                    time.sleep(0.2)
            core.create_namespaced_config_map(ns, {"metadata": {"name": "policy"},
                                                   "data": {"policy.yaml": yaml.safe_dump(POLICY)}})
            agent = nodes.procs["node-a"].pid
            cpu, rss = usage_over(agent, args.window)
            print(f"agent idle (0 pods): CPU {cpu:.1f} % of a core, RSS {rss / 2**20:.0f} MiB "
                  f"(over {args.window:.0f} s)")
            timeline = Timeline(core, ns)
            for kind, make in (("trivial pod", trivial_pod), ("mailwarden serve", serve_pod)):
                names = []
                for i in range(args.samples):
                    name = f"{kind.split()[0]}-{i}"
                    core.create_namespaced_pod(ns, make(name, "node-b"))
                    names.append(name)
                    timeline.wait([name])  # one at a time: the latency of a lone start
                print(latencies(kind, timeline.wait(names)))
            names = [f"load-{i}" for i in range(args.pods)]
            start = time.monotonic()
            for name in names:
                core.create_namespaced_pod(ns, trivial_pod(name, "node-a"))
            marks = timeline.wait(names, timeout=600)
            print(f"{args.pods} pods created at once on one node: all Ready after "
                  f"{max(m['ready'] for m in marks.values()) - start:.1f} s")
            cpu, rss = usage_over(agent, args.window)
            print(f"agent with {args.pods} pods (tcpSocket readiness every 1 s): CPU {cpu:.1f} % "
                  f"of a core, RSS {rss / 2**20:.0f} MiB (over {args.window:.0f} s)")
            timeline.stop = True
            core.delete_namespace(ns)
        finally:
            nodes.stop()


if __name__ == "__main__":
    main()
