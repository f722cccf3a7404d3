"""Start, kill and stop the node agents and the cluster DNS server of one cluster."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from e2e.nodes.build import bin_dir
from e2e.nodes.cluster import ClusterInfo
from e2e.nodes.network import HostNetwork
from e2e.nodes.storage import LocalVolumes

READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
# The image of every Mailwarden pod: the Dockerfile's ENTRYPOINT, ENV, USER and WORKDIR,
# with the repository's virtualenv standing in for /opt/mailwarden.
IMAGE_NAMES = ["ghcr.io/mailwarden/mailwarden", "mailwarden"]


class NodeAgentError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeSpec:
    name: str
    zone: str
    cpu: str = "16"
    memory: str = "32Gi"
    pods: str = "110"


SOURCE_ROOT = Path(__file__).resolve().parents[2]


def image_catalog(venv: Path) -> dict:
    # The files of the "image": the virtualenv, the Python installation it links to
    # (e.g. under /root/.pyenv, which uid 65532 could not traverse on the host), and this
    # checkout, where the editable install's sources live. The node agent keeps them
    # visible under a pod's volumes (an emptyDir at /tmp over a clone in /tmp).
    python = (venv / "bin" / "python3").resolve()
    paths = sorted({str(venv), str(python.parent.parent), str(SOURCE_ROOT)})
    path = ":".join([str(venv / "bin"), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
                     "/usr/bin", "/sbin", "/bin"])
    return {"images": [{
        "names": IMAGE_NAMES,
        "entrypoint": [str(venv / "bin" / "mailwarden")],
        "cmd": ["--help"],
        "env": {"PATH": path, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
        "user": "65532:65532",
        "workingDir": "/tmp",
        "paths": paths,
    }]}


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class NodeAgents:
    """The nodes of one cluster. `start()` sets up the host network, starts the DNS server
    and one agent per node and waits until every Node is Ready; `stop()` undoes it all."""

    def __init__(self, workdir: str | os.PathLike[str], cluster: ClusterInfo,
                 nodes: list[NodeSpec], *, venv: Path | None = None, kube_proxy: bool = False,
                 extra_args: list[str] | None = None, local_volumes: int = 0) -> None:
        self.workdir = Path(workdir).resolve()
        self.cluster = cluster
        self.nodes = {n.name: n for n in nodes}
        self.order = [n.name for n in nodes]
        self.venv = venv or Path(sys.prefix)
        self.extra_args = extra_args or []
        self.kube_proxy = kube_proxy
        # Statically provisioned local PersistentVolumes per node (storage.py), outside the
        # agents' state directories, which are hidden from containers.
        self.volumes = (LocalVolumes(self.workdir.with_name(self.workdir.name + "-volumes"),
                                     per_node=local_volumes) if local_volumes else None)
        self.net = HostNetwork(self.workdir, cluster.cluster_cidr, cluster.service_cidr,
                               cluster.api_host, cluster.dns_ip, kube_proxy=kube_proxy)
        self.procs: dict[str, subprocess.Popen] = {}
        self.dns: subprocess.Popen | None = None
        self.bin: Path | None = None
        self._atexit = False

    # -- names -------------------------------------------------------------------------
    def node_ip(self, name: str) -> str:
        return self.net.node_ip(self.order.index(name))

    def state_dir(self, name: str) -> Path:
        return self.workdir / name

    def name_prefix(self, name: str) -> str:
        """5 characters unique per (cluster, node): netns, veth and cgroup names start with it."""
        digest = hashlib.sha256(f"{self.workdir}/{name}".encode()).hexdigest()
        return "n" + digest[:4]

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.bin = bin_dir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        catalog = self.workdir / "images.json"
        catalog.write_text(json.dumps(image_catalog(self.venv), indent=2))
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        self.net.set_up(len(self.order))
        self._start_dns()
        for name in self.order:
            self._start_agent(name)
        self.wait_ready(self.order)
        if self.kube_proxy:
            if self.cluster.start_kube_proxy is None:
                raise NodeAgentError("kube_proxy=True, but the control plane cannot start "
                                     "kube-proxy")
            # The agents share the host's network namespace: one kube-proxy routes for all.
            self.cluster.start_kube_proxy(self.order[0])
        if self.volumes is not None:
            from kubernetes import config
            self.volumes.create(config.new_client_from_config(
                str(self.cluster.admin_kubeconfig)), self.order)

    def _dns_kubeconfig(self) -> Path:
        """Credentials for the DNS server with only what CoreDNS's system:coredns role has
        (list/watch Services and EndpointSlices): a ServiceAccount token, 24 h."""
        import yaml
        from kubernetes import client, config

        api = config.new_client_from_config(str(self.cluster.admin_kubeconfig))
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        name, ns = "mailwarden-cluster-dns", "kube-system"
        rules = [client.V1PolicyRule(api_groups=[""], resources=["services"],
                                     verbs=["list", "watch"]),
                 client.V1PolicyRule(api_groups=["discovery.k8s.io"],
                                     resources=["endpointslices"], verbs=["list", "watch"])]
        for create in (
                lambda: core.create_namespaced_service_account(
                    ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))),
                lambda: rbac.create_cluster_role(client.V1ClusterRole(
                    metadata=client.V1ObjectMeta(name=name), rules=rules)),
                lambda: rbac.create_cluster_role_binding(client.V1ClusterRoleBinding(
                    metadata=client.V1ObjectMeta(name=name),
                    role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io",
                                              kind="ClusterRole", name=name),
                    subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name,
                                                   namespace=ns)]))):
            try:
                create()
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
        token = core.create_namespaced_service_account_token(
            name, ns, client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=86400))
        ).status.token
        admin = yaml.safe_load(self.cluster.admin_kubeconfig.read_text())
        kubeconfig = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
                      "users": [{"name": name, "user": {"token": token}}],
                      "contexts": [{"name": name, "context": {
                          "cluster": admin["clusters"][0]["name"], "user": name}}],
                      "current-context": name}
        path = self.workdir / "dns.kubeconfig"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(kubeconfig))
        return path

    def _start_dns(self) -> None:
        kubeconfig = self._dns_kubeconfig()
        log = open(self.workdir / "dns.log", "ab")
        self.dns = subprocess.Popen(
            [str(self.bin / "nodeagent"), "dns", "--kubeconfig", str(kubeconfig),
             "--listen", f"{self.cluster.dns_ip}:53", "--zone", self.cluster.cluster_domain],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _start_agent(self, name: str) -> None:
        spec = self.nodes[name]
        ip = self.node_ip(name)
        ident = self.cluster.node_identity(name, [ip])
        args = [str(self.bin / "nodeagent"), "node",
                "--kubeconfig", str(ident.kubeconfig), "--node-name", name, "--node-ip", ip,
                "--label", f"topology.kubernetes.io/zone={spec.zone}",
                "--cluster-dns", self.cluster.dns_ip,
                "--cluster-domain", self.cluster.cluster_domain,
                "--state-dir", str(self.state_dir(name)), "--name-prefix", self.name_prefix(name),
                "--image-catalog", str(self.workdir / "images.json"),
                "--cpu", spec.cpu, "--memory", spec.memory, "--pods", spec.pods,
                "--hide-dir", str(self.workdir)]
        for hidden in self.cluster.hide_dirs:
            args += ["--hide-dir", str(hidden)]
        if not self.kube_proxy:
            # The kubernetes Service's ClusterIP is not routed: point pods at the API server.
            args += ["--api-server-host", self.cluster.api_host,
                     "--api-server-port", str(self.cluster.api_port)]
        for route in self.net.pod_routes():
            args += ["--pod-route", route]
        if ident.serving_cert and ident.serving_key:
            args += ["--tls-cert", str(ident.serving_cert), "--tls-key", str(ident.serving_key)]
        if ident.ca_cert:
            args += ["--client-ca", str(ident.ca_cert)]
        args += self.extra_args
        log = open(self.log_path(name), "ab")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def wait_ready(self, names: list[str], timeout: float = READY_TIMEOUT) -> None:
        """Until every named Node reports Ready=True (or an agent dies)."""
        from kubernetes import client, config  # the e2e dependency, imported late

        api = client.CoreV1Api(config.new_client_from_config(str(self.cluster.admin_kubeconfig)))
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            if self.dns is not None and self.dns.poll() is not None:
                raise NodeAgentError(f"the DNS server exited ({self.dns.returncode}); its log "
                                     f"ends:\n{_tail(self.workdir / 'dns.log')}")
            for name in list(pending):
                proc = self.procs.get(name)
                if proc is None or proc.poll() is not None:
                    raise NodeAgentError(f"node agent {name} exited ({proc and proc.returncode});"
                                         f" its log ends:\n{_tail(self.log_path(name))}")
                try:
                    node = api.read_node(name)
                except client.ApiException:
                    continue
                for cond in node.status.conditions or []:
                    if cond.type == "Ready" and cond.status == "True":
                        pending.discard(name)
            if not pending:
                return
            if time.monotonic() > deadline:
                name = sorted(pending)[0]
                raise NodeAgentError(f"Node {name} not Ready after {timeout:.0f} s; agent log "
                                     f"ends:\n{_tail(self.log_path(name))}")
            time.sleep(0.5)

    def kill_node(self, name: str) -> None:
        """Node loss: SIGKILL the agent and every process of its pods at once, and remove the
        pods' network namespaces. The Node object stays; its lease stops being renewed."""
        state = json.loads((self.state_dir(name) / "agent.json").read_text())
        freezer = Path(state["cgroups"]["freezer"])
        frozen = _write(freezer / "freezer.state", "FROZEN")
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.kill()
        else:
            _kill(state["pid"])
        for pid in _cgroup_pids(freezer):
            _kill(pid)
        if frozen:
            _write(freezer / "freezer.state", "THAWED")
        if proc is not None:
            proc.wait(timeout=10)
        # A container starting right now joins the cgroup a moment after its fork: keep
        # killing until the node's cgroups stay empty.
        deadline = time.monotonic() + 10
        while (left := _cgroup_pids(freezer)) and time.monotonic() < deadline:
            for pid in left:
                _kill(pid)
            time.sleep(0.02)
        self._cleanup(name)

    def kill_pod(self, name: str, pod_uid: str) -> int:
        """A crash of one pod on node `name`: SIGKILL every process of its containers at once
        (frozen first, so none forks away). The agent sees its containers exit and restarts
        them as the kubelet would. Returns how many processes were killed."""
        state = json.loads((self.state_dir(name) / "agent.json").read_text())
        freezer = Path(state["cgroups"]["freezer"])
        pods = [d for d in freezer.rglob(f"pod{pod_uid}") if d.is_dir()]
        if not pods:
            raise NodeAgentError(f"no cgroup of pod {pod_uid} on node {name}")
        killed = 0
        for group in pods:
            frozen = _write(group / "freezer.state", "FROZEN")
            for pid in _cgroup_pids(group):
                _kill(pid)
                killed += 1
            if frozen:
                _write(group / "freezer.state", "THAWED")
        return killed

    def blackhole(self, addresses: list[str]) -> None:
        """Cut `addresses` (pod IPs) off silently, both ways: each pod's host-side veth goes
        down (nothing it sends leaves, not even the FIN or RST of a killed process) and a
        `blackhole` route replaces its /32 route (what is sent to it is dropped without the
        ICMP error the cluster range's `unreachable` route would give). A machine that
        vanishes (power, a cut link) looks like this; with it before `kill_node`, clients
        find out only through their own timeouts."""
        for address in addresses:
            routes = json.loads(subprocess.run(
                ["ip", "-j", "-4", "route", "show", f"{address}/32"], check=True,
                capture_output=True, text=True).stdout or "[]")
            for route in routes:
                if route.get("dev"):
                    subprocess.run(["ip", "link", "set", "dev", route["dev"], "down"],
                                   check=True, capture_output=True, text=True)
            subprocess.run(["ip", "route", "replace", "blackhole", f"{address}/32"],
                           check=True, capture_output=True, text=True)

    def unblackhole(self, addresses: list[str]) -> None:
        for address in addresses:
            subprocess.run(["ip", "route", "del", "blackhole", f"{address}/32"],
                           capture_output=True, text=True)

    def restart_node(self, name: str) -> None:
        """Start a killed (or stopped) node's agent again and wait until it is Ready."""
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            raise NodeAgentError(f"node agent {name} is running")
        self._start_agent(name)
        self.wait_ready([name])

    def stop_node(self, name: str, timeout: float = STOP_TIMEOUT) -> None:
        """Stop one agent cleanly: its pods get their grace period, then it exits."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_node(name)

    def _cleanup(self, name: str) -> None:
        if self.bin is None:
            return
        subprocess.run([str(self.bin / "nodeagent"), "cleanup", "--state-dir",
                        str(self.state_dir(name)), "--name-prefix", self.name_prefix(name)],
                       capture_output=True, text=True)

    def stop(self) -> None:
        """Terminate every node's pods gracefully, stop the agents and the DNS server, and
        remove the host-side network. Safe to call twice."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_node(name)
            self._cleanup(name)
        self.procs.clear()
        if self.dns is not None and self.dns.poll() is None:
            self.dns.terminate()
            try:
                self.dns.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.dns.kill()
        self.dns = None
        self.net.tear_down()
        if self.volumes is not None:
            self.volumes.remove()


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _cgroup_pids(root: Path) -> list[int]:
    pids: list[int] = []
    for procs in root.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            continue
    return pids
