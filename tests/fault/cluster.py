"""A one-machine stand-in for what Kubernetes does with the rendered objects: pods, the
kubelet, the headless Service's DNS and the Deployment controller's rolling update.

- A **pod** is a real `mailwarden serve` process started from the rendered container's
  command, args and env, with its own loopback address (any 127.x.y.z is loopback on
  Linux), the way every pod has its own IP. All pods listen on the same gRPC port, as pods
  all listen on the containerPort; the port is taken free by the first pod (ephemeral)
  and reused by the others on their own addresses. The policy ConfigMap is projected into
  a temporary directory in the kubelet's `..data` layout. Substitutions, forced by running
  outside a pod: mount path → that directory, containerPorts → the shared port and an
  ephemeral metrics port, `--host <pod address>` and `--port-file` appended (to learn the
  metrics port), env values (fieldRef, resourceFieldRef) filled in as the kubelet would.
- The **kubelet** part runs the rendered startup and readiness probes (gRPC health, their
  period, timeout and failure threshold), restarts a container that exits (restartPolicy
  Always; the first restart is immediate, as the kubelet's back-off starts after it), and
  on pod deletion runs the preStop pause, then sends SIGTERM to the main process, then
  SIGKILL to what is left when terminationGracePeriodSeconds (counted from the deletion)
  runs out.
- The **headless Service** is `ServiceDNS`: ready, non-terminating pods only.
- The **Deployment controller** (`rolling_update`) follows the rendered strategy: it adds
  new-template pods while the total stays within replicas + maxSurge, and deletes old pods
  only while the pods available (ready for minReadySeconds) stay at replicas −
  maxUnavailable or more — the arithmetic of the real controller's rolling update.

Not simulated (needs a real cluster; see docs/fault.md): kube-proxy, CoreDNS caching,
the endpoint controller's propagation delay (here: instant), node failures, the liveness
probe (no scenario hangs a process), and the kubelet's back-off after a second crash.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.fault.dns import ServiceDNS
from testkit.kubelet import container_env, project_configmap
from testkit.processes import ServerFailed, ServerProcess
from tests.fault.spec import Rendered, naming

START_TIMEOUT = 120.0
EXIT_CONFIG = 2  # `mailwarden serve`: bad flags or port in use


@dataclass
class Event:
    at: float          # time.monotonic()
    pod: str
    what: str
    detail: str = ""


def probe_health(address: str, timeout: float, service: str = "") -> str:
    """One gRPC health probe, as the kubelet's native gRPC probe makes it (a fresh
    connection each time): SERVING / NOT_SERVING / the failure's status code."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def scrape(address: str, timeout: float = 10.0) -> dict[str, float]:
    """Every sample of a /metrics page as {'name{k="v",...}': value} (labels sorted)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


class Pod:
    """One filter pod: a container process plus the kubelet's view of it."""

    def __init__(self, cluster: "FilterCluster", name: str, ip: str,
                 rendered: Rendered) -> None:
        self.cluster = cluster
        self.name = name
        self.ip = ip
        self.rendered = rendered
        self.policy_hash = rendered.policy_hash
        self.workdir = cluster.workdir / name
        self.workdir.mkdir(parents=True)
        self.policy_dir = project_configmap(rendered.configmap, self.workdir / "policy")
        self.log_path = self.workdir / "serve.log"
        self.port_file = self.workdir / "ports.json"
        self.container: ServerProcess | None = None  # the current container's process
        self.metrics_port = 0
        self.created = time.monotonic()
        self.started = False        # the startup probe has passed
        self.ready = False
        self.ready_since: float | None = None
        self.terminating = False
        self.deleted_at: float | None = None
        self.gone = threading.Event()  # deleted and its container has exited
        self.restarts = 0
        self.exits: list[tuple[float, int]] = []
        self.termination: dict[str, float | int | bool] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._kubelet: threading.Thread | None = None

    # --- the container --------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.ip}:{self.cluster.grpc_port}"

    @property
    def metrics_address(self) -> str:
        return f"{self.ip}:{self.metrics_port}"

    @property
    def process(self) -> subprocess.Popen | None:
        return self.container.process if self.container is not None else None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def argv(self, grpc_port: int) -> list[str]:
        container = self.rendered.container
        command = container["command"][0]
        binary = Path(sys.executable).parent / command
        argv = [str(binary) if binary.exists() else command, *container["command"][1:]]
        ports = {p["name"]: str(p["containerPort"]) for p in container["ports"]}
        mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "policy")
        args = list(container["args"])
        for i, arg in enumerate(args):
            previous = args[i - 1] if i else ""
            if arg == mount:
                args[i] = str(self.policy_dir)
            elif previous == "--grpc-port" and arg == ports["grpc"]:
                args[i] = str(grpc_port)
            elif previous == "--metrics-port" and arg == ports["metrics"]:
                args[i] = "0"
        return argv + args + ["--host", self.ip, "--port-file", str(self.port_file)]

    def env(self) -> dict[str, str]:
        fields = {"metadata.name": self.name, "metadata.namespace":
                  self.rendered.owner["metadata"]["namespace"]}
        return {**os.environ, **container_env(self.rendered.container, fields)}

    def spawn(self, grpc_port: int) -> None:
        self.container = ServerProcess(self.name, self.argv(grpc_port), log_path=self.log_path,
                                       port_file=self.port_file, env=self.env()).start()

    def wait_listening(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the port file; returns the gRPC port (raises on an early exit)."""
        assert self.container is not None
        try:
            ports = self.container.wait_ports(timeout)
        except ServerFailed as exc:
            if exc.returncode is not None:
                raise ContainerExited(exc.returncode, self.log_tail()) from None
            raise RuntimeError(f"{self.name} did not listen in {timeout:g}s:\n"
                               + self.log_tail()) from None
        self.metrics_port = int(ports["metrics_port"])
        return int(ports["grpc_port"])

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stacks(self) -> str:
        """The pod process's thread stacks (py-spy dump, native frames too), to explain a
        pod that stopped answering; a note instead when py-spy is missing or cannot attach."""
        from benchmarks.profile import py_spy

        binary = py_spy()
        if binary is None:
            return "(py-spy not installed: no stacks)"
        try:
            done = subprocess.run([binary, "dump", "--native", "--pid", str(self.pid)],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(py-spy dump failed: {exc})"
        return done.stdout + done.stderr

    # --- the kubelet ----------------------------------------------------------------------
    def run_kubelet(self) -> None:
        self._kubelet = threading.Thread(target=self._kubelet_loop, name=f"kubelet-{self.name}",
                                         daemon=True)
        self._kubelet.start()

    def _set_ready(self, ready: bool) -> None:
        with self._lock:
            if ready and not self.ready:
                self.ready, self.ready_since = True, time.monotonic()
                self.cluster.event(self.name, "ready")
            elif not ready and self.ready:
                self.ready, self.ready_since = False, None
                self.cluster.event(self.name, "unready")

    def _kubelet_loop(self) -> None:
        container = self.rendered.container
        startup, readiness = container["startupProbe"], container["readinessProbe"]
        failures = 0
        next_probe = time.monotonic()
        while not self._stop.is_set():
            code = self.process.poll()
            if code is not None:
                self._container_exited(code)
                if self.terminating:
                    return
                failures, next_probe = 0, time.monotonic()
                continue
            if self.terminating:  # a terminating pod is out of the endpoints already
                self._stop.wait(0.05)
                continue
            now = time.monotonic()
            if now >= next_probe:
                probe = readiness if self.started else startup
                status = probe_health(self.address, float(probe["timeoutSeconds"]))
                if status == "SERVING":
                    failures = 0
                    if not self.started:
                        self.started = True
                        try:  # a restarted container has a new metrics port
                            self.wait_listening(5)
                        except (RuntimeError, ContainerExited):
                            pass  # the exit is handled on the next round
                        self.cluster.event(self.name, "started")
                        next_probe = time.monotonic()  # readiness probing begins at once
                        continue
                    self._set_ready(True)
                else:
                    failures += 1
                    if self.started and failures >= int(readiness["failureThreshold"]):
                        self._set_ready(False)
                next_probe = now + float(probe["periodSeconds"])
            self._stop.wait(min(0.05, max(0.0, next_probe - time.monotonic())))

    def _container_exited(self, code: int) -> None:
        at = time.monotonic()
        self.exits.append((at, code))
        self._set_ready(False)
        self.started = False
        self.cluster.event(self.name, "exited", f"code {code}")
        if self.terminating:
            self.gone.set()
            return
        # restartPolicy Always: same pod, same address, same port. The first restart is
        # immediate; the kubelet backs off 10 s, 20 s, ... for the ones after it.
        if self.restarts:
            self._stop.wait(min(300.0, 10.0 * 2 ** (self.restarts - 1)))
        self.restarts += 1
        self.spawn(self.cluster.grpc_port)
        self.cluster.event(self.name, "restarted", f"restart {self.restarts}")

    # --- faults and deletion --------------------------------------------------------------
    def signal_main(self, signum: int) -> None:
        """A signal to the container's main process (what `kill` inside it would do)."""
        self.cluster.event(self.name, signal.Signals(signum).name)
        self.process.send_signal(signum)

    def kill_container(self) -> None:
        """SIGKILL to every process of the container (an OOM kill, a crashed node's pod)."""
        self.cluster.event(self.name, "SIGKILL")
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def delete(self) -> None:
        """Pod deletion as the kubelet runs it: out of the endpoints at once, preStop
        pause, SIGTERM, then SIGKILL when the grace period (from deletion) runs out."""
        self.terminating = True
        self.deleted_at = time.monotonic()
        self._set_ready(False)
        self.cluster.event(self.name, "deleted")
        threading.Thread(target=self._terminate, name=f"terminate-{self.name}",
                         daemon=True).start()

    def _terminate(self) -> None:
        grace = self.rendered.termination_grace_seconds
        pre_stop = self.rendered.pre_stop_seconds
        time.sleep(pre_stop)
        sigterm_at = time.monotonic()
        if self.process.poll() is None:
            self.cluster.event(self.name, "SIGTERM", f"after preStop {pre_stop:g}s")
            self.process.send_signal(signal.SIGTERM)
        remaining = self.deleted_at + grace - time.monotonic()
        killed = False
        try:
            self.process.wait(max(0.0, remaining))
        except subprocess.TimeoutExpired:
            killed = True
            self.cluster.event(self.name, "SIGKILL", "terminationGracePeriodSeconds ran out")
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(30)
        self.termination = {"exit_code": self.process.returncode, "killed": killed,
                            "sigterm_to_exit": time.monotonic() - sigterm_at,
                            "deletion_to_exit": time.monotonic() - self.deleted_at,
                            "grace_period": grace}
        # The kubelet loop records the exit and stops.

    def close(self) -> None:
        self._stop.set()
        self.terminating = True
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self._kubelet is not None:
            self._kubelet.join(10)


class ContainerExited(RuntimeError):
    def __init__(self, code: int, log: str) -> None:
        super().__init__(f"container exited with code {code}:\n{log}")
        self.code = code


@dataclass
class RolloutReport:
    started: float
    replaced: float = 0.0             # every pod runs the new template (old ones terminating)
    finished: float = 0.0             # ... and the last old pod has exited
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    max_pods: int = 0                 # non-terminating pods at once (replicas + surge)
    min_available: int = 10**9       # available pods (ready ≥ minReadySeconds), lowest
    min_endpoints: int = 10**9       # addresses in DNS, lowest


class FilterCluster:
    """Pods of one SpamPolicy, its headless Service DNS, and the Deployment controller."""

    def __init__(self, workdir: Path, rendered: Rendered) -> None:
        self.workdir = Path(workdir)
        self.rendered = rendered
        self.pods: list[Pod] = []
        self.events: list[Event] = []
        self.grpc_port = 0
        self._names = itertools.count()
        # A /16 of loopback of our own (several test runs share this machine).
        rng = random.Random()
        self._net = f"127.{rng.randrange(64, 250)}.{rng.randrange(1, 250)}"
        self._hosts = itertools.count(2)
        self._lock = threading.Lock()
        self.dns = ServiceDNS(rendered.dns_name, self.endpoints).start()

    # --- state ------------------------------------------------------------------------------
    def event(self, pod: str, what: str, detail: str = "") -> None:
        with self._lock:
            self.events.append(Event(time.monotonic(), pod, what, detail))

    def endpoints(self) -> list[str]:
        """The headless Service: addresses of ready pods that are not terminating."""
        return [p.ip for p in list(self.pods) if p.ready and not p.terminating]

    @property
    def target(self) -> str:
        return self.dns.target(self.grpc_port)

    def live_pods(self) -> list[Pod]:
        return [p for p in self.pods if not p.terminating]

    def available(self, pod: Pod, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        since = pod.ready_since
        return (pod.ready and not pod.terminating and since is not None
                and now - since >= self.rendered.min_ready_seconds)

    # --- pods -------------------------------------------------------------------------------
    def create_pod(self, rendered: Rendered | None = None,
                   on_added: Callable[[], None] | None = None) -> Pod:
        """Start a pod and wait until it listens. `on_added` runs under the cluster lock
        as the pod joins `pods` (so a controller's own count never sees it twice)."""
        rendered = rendered or self.rendered
        for _attempt in range(10):
            name = f"{naming.workload_name(rendered.owner['metadata']['name'])}-" \
                   f"{rendered.policy_hash[:6]}-{next(self._names)}"
            pod = Pod(self, name, f"{self._net}.{next(self._hosts)}", rendered)
            pod.spawn(self.grpc_port)
            try:
                port = pod.wait_listening()
            except ContainerExited as exc:
                pod.close()
                if exc.code == EXIT_CONFIG and "in use" in str(exc):
                    continue  # someone else holds this address:port; take another address
                raise
            if not self.grpc_port:
                self.grpc_port = port
            with self._lock:
                self.pods.append(pod)
                if on_added is not None:
                    on_added()
            self.event(pod.name, "created", pod.address)
            pod.run_kubelet()
            return pod
        raise RuntimeError("no free loopback address for a pod after 10 tries")

    def scale_up(self, count: int, timeout: float = START_TIMEOUT) -> list[Pod]:
        """Create `count` pods (in parallel, as a ReplicaSet does) and wait until every one
        is ready and available (minReadySeconds)."""
        if not self.grpc_port:  # the first pod fixes the port everyone listens on
            first = [self.create_pod()]
            count -= 1
        else:
            first = []
        created: list[Pod] = []
        errors: list[BaseException] = []

        def make() -> None:
            try:
                pod = self.create_pod()
                created.append(pod)
            except BaseException as exc:  # reported below
                errors.append(exc)
        threads = [threading.Thread(target=make) for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        pods = first + created
        self.wait(lambda: all(self.available(p) for p in pods), timeout,
                  "pods to become available")
        return pods

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name} (ready={p.ready}):\n{p.log_tail(8)}"
                                 for p in self.pods)
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{logs}")
            time.sleep(0.05)

    # --- the Deployment controller ----------------------------------------------------------
    def rolling_update(self, new: Rendered, timeout: float = 600.0,
                       tick: float = 0.1) -> RolloutReport:
        """Replace every pod of the current template with pods of `new`, following the
        rendered Deployment's strategy; returns when the last old pod has exited."""
        replicas = self.rendered.replicas
        surge = new.max_surge()
        unavailable = new.max_unavailable()
        min_available = replicas - unavailable
        report = RolloutReport(started=time.monotonic())
        self.event("deployment", "rollout", f"{self.rendered.policy_hash} -> "
                   f"{new.policy_hash} (maxSurge {surge}, maxUnavailable {unavailable}, "
                   f"minReadySeconds {new.min_ready_seconds:g})")
        deadline = report.started + timeout
        pending: list[threading.Thread] = []
        creating = [0]  # pods being started (a pod leaves this count as it joins `pods`)

        failures: list[BaseException] = []

        def added() -> None:
            creating[0] -= 1
        while True:
            now = time.monotonic()
            if now > deadline:
                raise AssertionError("rollout did not finish in time")
            if failures:
                raise failures[0]
            with self._lock:
                live = [p for p in self.pods if not p.terminating]
                starting = creating[0]
            report.max_pods = max(report.max_pods, len(live) + starting)
            old = [p for p in live if p.policy_hash != new.policy_hash]
            fresh = [p for p in live if p.policy_hash == new.policy_hash]
            available_fresh = [p for p in fresh if self.available(p, now)]
            available_all = [p for p in live if self.available(p, now)]
            report.min_available = min(report.min_available, len(available_all))
            report.min_endpoints = min(report.min_endpoints, len(self.endpoints()))
            if not old and len(available_fresh) == replicas and not starting:
                break
            # Scale the new ReplicaSet up within replicas + maxSurge.
            total = len(live) + starting
            grow = min(replicas + surge - total, replicas - len(fresh) - starting)
            for _ in range(max(0, grow)):
                with self._lock:
                    creating[0] += 1
                    starting += 1

                def make() -> None:
                    try:
                        pod = self.create_pod(new, on_added=added)
                    except BaseException as exc:  # re-raised by the controller loop
                        with self._lock:
                            creating[0] -= 1
                        failures.append(exc)
                        return
                    report.created.append(pod.name)
                thread = threading.Thread(target=make, daemon=True)
                thread.start()
                pending.append(thread)
            # Scale the old ReplicaSet down while enough pods stay available.
            new_unavailable = len(fresh) + starting - len(available_fresh)
            max_scaled_down = total - min_available - new_unavailable
            spare = len(available_all) - min_available
            remove = min(max_scaled_down, spare, len(old))
            if remove > 0:
                # The ReplicaSet deletes not-ready pods first, then the most recently ready.
                victims = sorted(old, key=lambda p: (p.ready, -(p.ready_since or 0)))[:remove]
                for pod in victims:
                    pod.delete()
                    report.deleted.append(pod.name)
            time.sleep(tick)
        for thread in pending:
            thread.join()
        self.rendered = new
        report.replaced = time.monotonic()
        self.event("deployment", "rollout complete")
        for pod in self.pods:
            if pod.terminating and not pod.gone.wait(max(1.0, deadline - time.monotonic())):
                raise AssertionError(f"{pod.name} never exited")
        report.finished = time.monotonic()
        return report

    # --- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        for pod in self.pods:
            pod.close()
        self.dns.stop()

    def __enter__(self) -> "FilterCluster":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
