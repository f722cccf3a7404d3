"""Client Jobs inside the cluster, from the Mailwarden image itself.

Why in-cluster Jobs and not `kubectl port-forward` for Classify and load: a port-forward
tunnels through the API server to ONE pod. During a rollout, a pod deletion or a drain that
pod goes away and the tunnel breaks — the test would count the tunnel's failures, not the
service's — and it bypasses what senders use: the headless Service's DNS, per-request
round-robin over every ready pod, health checking and retries (`mailwarden.client`). A Job
running `mailwarden classify` or e2e/incluster/mwclient.py calls the filter pods exactly the
way a sending system in the cluster does, and records every failed call itself.

Every Job pod passes the `restricted` Pod Security level (the e2e namespace enforces it).
A load generator can be kept off given nodes (`avoid_nodes`), so draining a node never takes
the load that measures the drain down with it; nothing here depends on a control-plane node
that takes pods (kind has one, the process provider and most managed clusters do not).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.kube import Kube, KubectlError, wait_for

CLIENT_CONFIGMAP = "e2e-client"
MESSAGES_CONFIGMAP = "e2e-messages"
CLIENT_SCRIPT = Path(__file__).parent / "incluster" / "mwclient.py"
SUMMARY_PREFIX = "E2E-SUMMARY "
PART_PREFIX = "E2E-PART "

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def install_client(kube: Kube, messages: dict[str, bytes]) -> None:
    """The client script and the test messages, as ConfigMaps the Jobs mount."""
    script = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": CLIENT_CONFIGMAP},
              "data": {"mwclient.py": CLIENT_SCRIPT.read_text()}}
    kube.apply(script, "--server-side", "--force-conflicts")
    # Server-side apply: no last-applied annotation, which would cap the messages at 256 KiB.
    data = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": MESSAGES_CONFIGMAP},
            "binaryData": {name: base64.b64encode(raw).decode()
                           for name, raw in messages.items()}}
    kube.apply(data, "--server-side", "--force-conflicts")


def job_manifest(name: str, image: str, command: list[str], *, parallelism: int = 1,
                 avoid_nodes: tuple[str, ...] = (), cpu: str = "100m") -> dict[str, Any]:
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "client",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": command,
            "resources": {"requests": {"cpu": cpu, "memory": "128Mi"},
                          "limits": {"memory": "512Mi"}},
            "securityContext": RESTRICTED_CONTAINER,
            "volumeMounts": [
                {"name": "client", "mountPath": "/e2e/bin", "readOnly": True},
                {"name": "messages", "mountPath": "/e2e/messages", "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }],
        "volumes": [
            {"name": "client", "configMap": {"name": CLIENT_CONFIGMAP}},
            {"name": "messages", "configMap": {"name": MESSAGES_CONFIGMAP}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if avoid_nodes:
        pod["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{
                "key": "kubernetes.io/hostname", "operator": "NotIn",
                "values": sorted(avoid_nodes)}]}]}}}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "mailwarden-e2e"}},
        "spec": {"parallelism": parallelism, "completions": parallelism, "backoffLimit": 0,
                 "ttlSecondsAfterFinished": 3600,
                 "template": {"metadata": {"labels": {"e2e-job": name}}, "spec": pod}},
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def logs(kube: Kube, name: str) -> str:
    result = kube.run("logs", "-l", f"e2e-job={name}", "--tail=-1", "--max-log-requests=20",
                      "--prefix", check=False)
    return result.stdout + result.stderr


def summaries(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        # `--prefix` puts "[pod/name/container] " in front of every line.
        _, found, payload = line.partition(SUMMARY_PREFIX)
        if found:
            out.append(json.loads(payload))
    return out


def parts(text: str) -> dict[str, list[Any]]:
    """The records a client printed in parts (mwclient's PART_PREFIX lines), by kind."""
    out: dict[str, list[Any]] = {}
    for line in text.splitlines():
        _, found, payload = line.partition(PART_PREFIX)
        if found:
            part = json.loads(payload)
            out.setdefault(part["kind"], []).extend(part["items"])
    return out


def progress_by_pod(text: str) -> dict[str, int]:
    """Answers so far per load pod, from its latest progress line in prefixed logs."""
    latest: dict[str, int] = {}
    for line in text.splitlines():
        if '"event": "progress"' in line:
            pod = line.split(" ", 1)[0]  # the "[pod/NAME/container]" prefix
            latest[pod] = json.loads(line[line.find("{"):])["ok"]
    return latest


def _job_state(kube: Kube, name: str) -> str | None:
    job = kube.get("job", name) or {}
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return cond["type"]
    return None


def run_job(kube: Kube, image: str, prefix: str, command: list[str], *,
            timeout: float = 300, volumes: list[dict[str, Any]] | None = None) -> str:
    """Run a one-shot client Job to completion and return its output (fails with the
    output when the Job fails). `volumes`: extra volumes, each mounted read-only at
    /e2e/<name> (client certificates, for example)."""
    name = unique(prefix)
    manifest = job_manifest(name, image, command)
    for volume in volumes or []:
        pod = manifest["spec"]["template"]["spec"]
        pod["volumes"].append(volume)
        pod["containers"][0]["volumeMounts"].append(
            {"name": volume["name"], "mountPath": f"/e2e/{volume['name']}", "readOnly": True})
    kube.apply(manifest)
    state = wait_for(lambda: _job_state(kube, name), timeout, f"Job {name} to finish",
                     interval=2)
    output = logs(kube, name)
    assert state == "Complete", f"Job {name} failed:\n{output}\n{describe_job(kube, name)}"
    return output


def describe_job(kube: Kube, name: str) -> str:
    return kube.run("describe", "pods", "-l", f"e2e-job={name}", check=False).stdout[-4000:]


@dataclass
class LoadRun:
    """A load Job: `mwclient.py load` in `parallelism` pods against the headless Service,
    until `stop()`; the summary sums every pod's counts."""

    kube: Kube
    image: str
    target: str
    threads: int = 2
    rate: float = 40.0
    parallelism: int = 1
    avoid_nodes: tuple[str, ...] = ()
    deadline: float = 5.0
    extra_args: tuple[str, ...] = ()       # more `mwclient.py load` options
    name: str = field(default_factory=lambda: unique("load"))
    started: float = 0.0
    # Another mwclient command that reports progress and stops the same way (replaces
    # `load` and the options above), and extra volumes, each mounted at /e2e/<name>.
    command: tuple[str, ...] = ()
    volumes: tuple[dict[str, Any], ...] = ()

    def start(self) -> "LoadRun":
        command = list(self.command) or [
            "python", "/e2e/bin/mwclient.py", "load", "--target", self.target,
            "--threads", str(self.threads), "--rate", str(self.rate),
            "--deadline", str(self.deadline), *self.extra_args]
        manifest = job_manifest(self.name, self.image, command, parallelism=self.parallelism,
                                avoid_nodes=self.avoid_nodes, cpu="200m")
        pod = manifest["spec"]["template"]["spec"]
        for volume in self.volumes:
            pod["volumes"].append(volume)
            pod["containers"][0]["volumeMounts"].append(
                {"name": volume["name"], "mountPath": f"/e2e/{volume['name']}",
                 "readOnly": True})
        self.kube.apply(manifest)
        self.started = time.monotonic()
        wait_for(self._flowing, 180, f"load Job {self.name} to get answers", interval=2)
        return self

    def pods(self) -> list[dict[str, Any]]:
        return self.kube.items("pods", "-l", f"e2e-job={self.name}")

    def _latest(self) -> dict[str, int]:
        return progress_by_pod(logs(self.kube, self.name))

    def answered(self) -> int:
        return sum(self._latest().values())

    def wait_more_answers(self, count: int, timeout: float = 120) -> None:
        """Wait until `count` more calls have been answered than now."""
        start = self.answered()
        wait_for(lambda: self.answered() >= start + count, timeout,
                 f"{count} more answers to load Job {self.name}", interval=2)

    def _flowing(self) -> bool:
        pods = self.pods()
        for pod in pods:
            if (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                raise AssertionError(f"load pod ended early:\n{logs(self.kube, self.name)}")
        if len(pods) < self.parallelism:
            return False
        latest = self._latest()  # every pod has reported answers at least once
        return len(latest) >= self.parallelism and all(v > 0 for v in latest.values())

    def stop(self, timeout: float = 120) -> dict[str, Any]:
        """Ask every load pod to stop (a file in its /tmp), wait, and sum the summaries."""
        state, text = self.stop_raw(timeout)
        found = summaries(text)
        assert state == "Complete" and len(found) == self.parallelism, \
            f"load Job {self.name} ended {state} with {len(found)} summaries:\n{text[-6000:]}"
        total: dict[str, Any] = {"ok": 0, "failed": 0, "codes": {}, "failures": [],
                                 "hashes": {}, "last_hashes": [], "pods": found,
                                 "disturbed": [], "disturbed_total": 0, "hash_seen": {}}
        for item in found:
            assert item["stopped_by"] == "stop-file", f"load ran out of time: {item}"
            total["ok"] += item["ok"]
            total["failed"] += item["failed"]
            total["failures"] += item["failures"]
            total["last_hashes"] += item["last_hashes"]
            total["disturbed"] += item.get("disturbed", [])
            total["disturbed_total"] += item.get("disturbed_total", 0)
            for key, (first, last) in item.get("hash_seen", {}).items():
                was = total["hash_seen"].get(key, [first, last])
                total["hash_seen"][key] = [min(was[0], first), max(was[1], last)]
            for key in ("codes", "hashes"):
                for k, v in item[key].items():
                    total[key][k] = total[key].get(k, 0) + v
        return total

    def stop_raw(self, timeout: float = 120) -> tuple[str, str]:
        """Ask every load pod to stop (a file in its /tmp) and wait: the Job's final state
        (Complete or Failed) and its pods' logs."""
        for pod in self.pods():
            name = pod["metadata"]["name"]
            try:
                self.kube.run("exec", name, "--", "python", "-c",
                              "open('/tmp/stop', 'w').close()")
            except KubectlError:
                pass  # already finished: its summary is in the log
        state = wait_for(lambda: _job_state(self.kube, self.name), timeout,
                         f"load Job {self.name} to finish", interval=2)
        return state, logs(self.kube, self.name)


def describe_load(summary: dict[str, Any]) -> str:
    latencies = [p["latency_ms"] for p in summary["pods"]]
    return (f"{summary['ok']} calls answered, {summary['failed']} failed "
            f"(codes {summary['codes']}), latency per load pod {latencies}")


def disturbance(summary: dict[str, Any], since: float = 0.0,
                slower_than: float = 0.0) -> dict[str, Any]:
    """What the load's clients saw after wall-clock time `since` (a fault's injection):
    the calls that failed or were slow (mwclient's --slow-seconds; only those slower than
    `slower_than` too, when given), and the window from the first such call's start to the
    last one's end (0 when there was none); `slowest`: the longest such call, seconds."""
    calls = [d for d in summary["disturbed"]
             if d[1] >= since and (d[2] != "OK" or d[1] - d[0] > slower_than)]
    window = (max(d[1] for d in calls) - min(d[0] for d in calls)) if calls else 0.0
    failed = [d for d in calls if d[2] != "OK"]
    return {"calls": len(calls), "failed": len(failed),
            "codes": {c: sum(1 for d in calls if d[2] == c) for c in {d[2] for d in calls}},
            "window_seconds": round(window, 3),
            "slowest": round(max(d[1] - d[0] for d in calls), 3) if calls else None,
            "first": round(min(d[0] for d in calls) - since, 3) if calls else None,
            "last": round(max(d[1] for d in calls) - since, 3) if calls else None}
