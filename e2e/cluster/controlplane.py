"""A real Kubernetes control plane on this host: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and metrics-server as processes (docs/control-plane.md).
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2e.cluster import addons, binaries, health, kubeproxy, network
from e2e.cluster.kubeconfig import write_kubeconfig
from e2e.cluster.pki import CertificateAuthority, KeyPair, write_signing_key
from e2e.cluster.procs import Component, ComponentError

APISERVER_PORT = 6443
METRICS_SERVER_PORT = 4443
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_DOMAIN = "cluster.local"
# Start-up budgets: generous, because CI's 2 cores are shared with the test that waits.
ETCD_TIMEOUT = 60.0
APISERVER_TIMEOUT = 120.0
COMPONENT_TIMEOUT = 90.0

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""


class ControlPlaneError(ComponentError):
    """The control plane could not start (or was asked something it cannot do)."""


@dataclass(frozen=True)
class NodeCredentials:
    """What a node agent needs to join as `system:node:<name>` (group system:nodes)."""
    name: str
    kubeconfig: Path
    client_cert: Path
    client_key: Path
    serving_cert: Path
    serving_key: Path
    ca_cert: Path


class ControlPlane:
    """Start with `start()` (or `with ControlPlane(workdir) as cp:`), stop with `stop()`.

    Every start makes a fresh cluster in `workdir` (new PKI, empty etcd). `host_ip` is the
    cluster's one non-loopback address (see network.py); the CIDRs are parameters so the
    node side can pick ranges that fit its host.
    """

    def __init__(self, workdir: str | os.PathLike[str], *, host_ip: str | None = None,
                 service_cidr: str = "10.96.0.0/16", cluster_cidr: str = "10.244.0.0/16",
                 node_cidr_mask_size: int = 24, allocate_node_cidrs: bool = True,
                 metrics_resolution: str = "15s", audit: bool = True,
                 bin_dir: Path | None = None,
                 controller_manager_args: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir).resolve()
        self.host_ip = host_ip or network.default_host_ip(self.workdir)
        self.service_cidr = service_cidr
        self.cluster_cidr = cluster_cidr
        self.node_cidr_mask_size = node_cidr_mask_size
        self.allocate_node_cidrs = allocate_node_cidrs
        self.metrics_resolution = metrics_resolution
        self.audit = audit
        # More kube-controller-manager flags (the e2e suite's shorter node-monitor grace).
        self.controller_manager_args = tuple(controller_manager_args)
        self._bin_dir = bin_dir
        self.components: dict[str, Component] = {}
        self.ports: dict[str, int] = {}
        self._owns_host_ip = False
        self._atexit_registered = False
        self._api: Any = None
        self._cas: dict[str, CertificateAuthority] = {}
        # "<component> <state>" -> seconds from start() until it was reached, for reports.
        self.startup: dict[str, float] = {}
        self._began = 0.0
        network.check_disjoint(host_ip=f"{self.host_ip}/32", service_cidr=service_cidr,
                               cluster_cidr=cluster_cidr)
        if not 8 <= node_cidr_mask_size <= 30 or \
                ipaddress.ip_network(cluster_cidr).prefixlen > node_cidr_mask_size:
            raise ControlPlaneError(f"node_cidr_mask_size {node_cidr_mask_size} does not fit "
                                    f"cluster_cidr {cluster_cidr}")

    # --- paths and addresses -------------------------------------------------------------

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig (user kubernetes-admin, group system:masters)."""
        return self.workdir / "kubeconfigs" / "admin.conf"

    @property
    def kube_proxy_kubeconfig(self) -> Path:
        """Credentials for kube-proxy (user system:kube-proxy, bound to system:node-proxier)."""
        return self.workdir / "kubeconfigs" / "kube-proxy.conf"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def server(self) -> str:
        return f"https://{self.host_ip}:{APISERVER_PORT}"

    @property
    def kubernetes_service_ip(self) -> str:
        return str(ipaddress.ip_network(self.service_cidr)[1])

    @property
    def dns_ip(self) -> str:
        """By convention the cluster DNS Service's IP: the 10th address of the Service CIDR."""
        return str(ipaddress.ip_network(self.service_cidr)[10])

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = binaries.bin_dir()
        return self._bin_dir

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (kubectl, helm) talking to this cluster as admin,
        with the matching kubectl first on PATH."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> "ControlPlane":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, detach: bool = False) -> "ControlPlane":
        """Bring everything up and wait until it is healthy. `detach`: the processes outlive
        this Python process (the CLI's `up`); otherwise they die with it -- precisely, with
        the thread that calls start() (PR_SET_PDEATHSIG), so call it from a thread that
        lives as long as the cluster should (the main thread, as pytest fixtures do)."""
        bins = self.bin_dir
        self._began = time.monotonic()
        self.startup.clear()
        self._stop_leftovers()
        self._fresh_workdir()
        self._owns_host_ip = network.add_host_ip(self.host_ip)
        if not detach and not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._write_pki()
            self.ports = {"etcd": network.free_port(), "etcd-peer": network.free_port(),
                          "kube-controller-manager": network.free_port(),
                          "kube-scheduler": network.free_port(),
                          "kube-apiserver": APISERVER_PORT,
                          "metrics-server": METRICS_SERVER_PORT}
            for name in ("kube-apiserver", "metrics-server"):
                if network.port_in_use(self.host_ip, self.ports[name]):
                    raise ControlPlaneError(
                        f"{self.host_ip}:{self.ports[name]} ({name}) is in use: another "
                        f"cluster on host_ip {self.host_ip}? (python -m e2e.cluster down "
                        f"--workdir {self.workdir})")
            die = not detach
            self._launch("etcd", self._etcd_argv(bins), die)
            self._save_state()
            self._wait("etcd", "healthy", health.etcd_ok(
                f"https://127.0.0.1:{self.ports['etcd']}/health",
                health.tls_context(self.pki / "etcd-ca.crt", self.pki / "apiserver-etcd-client.crt",
                                   self.pki / "apiserver-etcd-client.key")), ETCD_TIMEOUT)
            self._launch("kube-apiserver", self._apiserver_argv(bins), die)
            self._save_state()
            self._wait("kube-apiserver", "ready", health.endpoint_ok(
                f"{self.server}/readyz", self._admin_tls()), APISERVER_TIMEOUT)
            # metrics-server reads the request-header CA from kube-system at start-up: its
            # RBAC must exist before it runs.
            addons.create_all(self.api_client(), addons.rbac() + addons.metrics_registration(
                self.host_ip, METRICS_SERVER_PORT, self.ca_cert))
            self._launch("kube-controller-manager", self._controller_manager_argv(bins), die)
            self._launch("kube-scheduler", self._scheduler_argv(bins), die)
            self._launch("metrics-server", self._metrics_server_argv(bins), die)
            self._save_state()
            serving = health.tls_context(self.ca_cert)
            self._wait("kube-controller-manager", "healthy", health.endpoint_ok(
                f"https://127.0.0.1:{self.ports['kube-controller-manager']}/healthz", serving),
                COMPONENT_TIMEOUT)
            self._wait("kube-scheduler", "ready", health.endpoint_ok(
                f"https://127.0.0.1:{self.ports['kube-scheduler']}/readyz", serving),
                COMPONENT_TIMEOUT)
            # /readyz of metrics-server waits for a first scrape of some node; without nodes
            # /livez is what says it serves.
            self._wait("metrics-server", "live", health.endpoint_ok(
                f"https://{self.host_ip}:{METRICS_SERVER_PORT}/livez", serving),
                COMPONENT_TIMEOUT)
            self._wait("metrics-server", "registered as metrics.k8s.io",
                       lambda: addons.api_service_available(self.api_client(),
                                                            "v1beta1.metrics.k8s.io"),
                       COMPONENT_TIMEOUT)
            # The service-account controller making `default` in `default` is the controller
            # manager doing real work (and pods need that account before they can be created).
            self._wait("kube-controller-manager", "running controllers (ServiceAccount "
                       "default/default created)", self._default_service_account,
                       COMPONENT_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def start_kube_proxy(self, node_name: str, netns: str | None = None) -> Component:
        """Run the real kube-proxy (nftables mode) for node `node_name` in network namespace
        `netns` (None: the host's) and wait for its first sync. It is stopped, and its
        tables removed, with the control plane. One per network namespace. Create the Node
        first: kube-proxy takes the node's IP from it (and waits 30 s for it to exist)."""
        name = f"kube-proxy-{node_name}"
        if name in self.components:
            raise ControlPlaneError(f"kube-proxy for {node_name} runs already")
        for other in self.components.values():
            if other.name.startswith("kube-proxy-") and other.netns == netns:
                raise ControlPlaneError(f"{other.name} already runs in network namespace "
                                        f"{netns or '(host)'}: one kube-proxy per namespace")
        config_path = self.workdir / f"{name}.yaml"
        config_path.write_text(kubeproxy.config(
            kubeconfig=self.kube_proxy_kubeconfig, node_name=node_name,
            cluster_cidr=self.cluster_cidr, healthz_port=network.free_port(),
            metrics_port=network.free_port()))
        argv = kubeproxy.in_netns(netns, [str(self.bin_dir / "kube-proxy"),
                                          f"--config={config_path}"])
        self._launch(name, argv, die_with_parent=True)
        self.components[name].netns = netns
        self._save_state()
        self._wait(name, "syncing (its nftables table programmed)",
                   lambda: kubeproxy.rules_programmed(netns), COMPONENT_TIMEOUT)
        return self.components[name]

    def stop_kube_proxy(self, node_name: str) -> None:
        """Stop the kube-proxy of `node_name` and remove its tables (no-op if none runs)."""
        component = self.components.pop(f"kube-proxy-{node_name}", None)
        if component is not None:
            component.stop()
            kubeproxy.cleanup(component.netns)
            self._save_state()

    def stop(self) -> None:
        """Stop every component (reverse start order) and release host_ip. Idempotent."""
        for name in reversed(list(self.components)):
            component = self.components[name]
            component.stop()
            if name.startswith("kube-proxy-"):
                kubeproxy.cleanup(component.netns)
        self.components.clear()
        if self._owns_host_ip:
            network.remove_host_ip(self.host_ip)
            self._owns_host_ip = False
        if self._api is not None:
            self._api.close()
            self._api = None
        if self.workdir.is_dir():
            self._save_state(stopped=True)

    def status(self) -> dict[str, str]:
        """Component -> "running (pid N)" / "not running", for humans."""
        return {name: (f"running (pid {c.pid})" if c.running() else "not running")
                for name, c in self.components.items()}

    @classmethod
    def attach(cls, workdir: str | os.PathLike[str]) -> "ControlPlane":
        """The control plane a (detached) `start()` left in `workdir`, to inspect or stop."""
        workdir = Path(workdir).resolve()
        state_file = workdir / "state.json"
        if not state_file.is_file():
            raise ControlPlaneError(f"no control plane in {workdir} (no state.json)")
        state = json.loads(state_file.read_text())
        cp = cls(workdir, host_ip=state["host_ip"], service_cidr=state["service_cidr"],
                 cluster_cidr=state["cluster_cidr"],
                 node_cidr_mask_size=state["node_cidr_mask_size"])
        cp.ports = state.get("ports", {})
        cp.components = {name: Component.from_state(name, s)
                         for name, s in state.get("components", {}).items()}
        cp._owns_host_ip = state.get("owns_host_ip", False) and not state.get("stopped")
        return cp

    # --- clients and credentials ---------------------------------------------------------

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient authenticated as the admin (reused; closed by stop)."""
        if self._api is None:
            from kubernetes import config
            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def node_credentials(self, name: str, ips: list[str] | tuple[str, ...] = ()) -> NodeCredentials:
        """Client credentials for node `name` (CN=system:node:<name>, O=system:nodes) and a
        serving certificate for its kubelet endpoint (SANs: the name and `ips`)."""
        if not name or not all(c.isalnum() or c in "-." for c in name) or name != name.lower():
            raise ControlPlaneError(f"node name {name!r} is not a DNS subdomain")
        for ip in ips:
            ipaddress.ip_address(ip)
        directory = self.workdir / "nodes" / name
        ca = self._ca("ca")
        client_pair = ca.issue("client", f"system:node:{name}", organizations=("system:nodes",),
                               client=True, directory=directory)
        serving = ca.issue("serving", name, server=True, dns_names=(name,), ips=tuple(ips),
                           directory=directory)
        kubeconfig = write_kubeconfig(directory / "kubeconfig", server=self.server,
                                      ca_cert=self.ca_cert, client_cert=client_pair.cert,
                                      client_key=client_pair.key, user=f"system:node:{name}")
        return NodeCredentials(name=name, kubeconfig=kubeconfig, client_cert=client_pair.cert,
                               client_key=client_pair.key, serving_cert=serving.cert,
                               serving_key=serving.key, ca_cert=self.ca_cert)

    # --- internals -----------------------------------------------------------------------

    def _launch(self, name: str, argv: list[str], die_with_parent: bool) -> None:
        component = Component(name=name, argv=argv, log=self.logs / f"{name}.log")
        self.components[name] = component
        component.start(die_with_parent=die_with_parent)

    def _wait(self, name: str, what: str, check: Any, timeout: float) -> None:
        try:
            self.components[name].wait_until(check, what=what, timeout=timeout)
        except ComponentError as err:
            raise ControlPlaneError(str(err)) from None
        self.startup[f"{name} {what}"] = time.monotonic() - self._began

    def _default_service_account(self) -> str | None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        try:
            client.CoreV1Api(self.api_client()).read_namespaced_service_account("default",
                                                                               "default")
        except ApiException as err:
            return f"ServiceAccount default/default: {err.status} {err.reason}"
        return None

    def _admin_tls(self) -> Any:
        return health.tls_context(self.ca_cert, self.pki / "admin.crt", self.pki / "admin.key")

    def _stop_leftovers(self) -> None:
        """A run that was killed before it could stop (detached, or SIGKILLed with a
        component that ignored its death signal) left processes: stop them first."""
        if not (self.workdir / "state.json").is_file():
            return
        try:
            previous = ControlPlane.attach(self.workdir)
        except (ControlPlaneError, ValueError, KeyError):
            return
        if any(c.running() for c in previous.components.values()):
            previous.stop()
        elif previous._owns_host_ip and previous.host_ip != self.host_ip:
            network.remove_host_ip(previous.host_ip)

    def _fresh_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("pki", "kubeconfigs", "nodes", "etcd"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
        self.logs.mkdir(exist_ok=True)
        for old in self.logs.glob("*.log"):
            old.unlink()

    def _ca(self, name: str) -> CertificateAuthority:
        if name not in self._cas:
            if not (self.pki / f"{name}.key").is_file():
                raise ControlPlaneError(f"no PKI in {self.pki}: start the control plane first")
            self._cas[name] = CertificateAuthority.load(self.pki, name)
        return self._cas[name]

    def _write_pki(self) -> None:
        pki = self.pki
        pki.mkdir(parents=True, exist_ok=True)
        os.chmod(pki, 0o700)
        ca = CertificateAuthority.create(pki, "ca", "mailwarden-e2e-ca")
        etcd_ca = CertificateAuthority.create(pki, "etcd-ca", "mailwarden-e2e-etcd-ca")
        front_proxy_ca = CertificateAuthority.create(pki, "front-proxy-ca",
                                                     "mailwarden-e2e-front-proxy-ca")
        self._cas = {"ca": ca, "etcd-ca": etcd_ca, "front-proxy-ca": front_proxy_ca}
        loopback = ("127.0.0.1",)
        etcd_ca.issue("etcd-server", "etcd", server=True, client=True, dns_names=("localhost",),
                      ips=loopback)
        etcd_ca.issue("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True)
        service_names = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                         f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "localhost")
        ca.issue("apiserver", "kube-apiserver", server=True, dns_names=service_names,
                 ips=(self.host_ip, self.kubernetes_service_ip, "127.0.0.1"))
        ca.issue("apiserver-kubelet-client", addons.APISERVER_KUBELET_USER, client=True)
        front_proxy_ca.issue("front-proxy-client", "front-proxy-client", client=True)
        write_signing_key(pki / "sa.key", pki / "sa.pub")
        for name in ("kube-controller-manager", "kube-scheduler"):
            ca.issue(f"{name}-serving", name, server=True, dns_names=("localhost",),
                     ips=loopback)
        svc = f"{addons.METRICS_SERVICE}.{addons.METRICS_NAMESPACE}.svc"
        ca.issue("metrics-server-serving", addons.METRICS_SERVICE, server=True,
                 dns_names=(svc, f"{svc}.{CLUSTER_DOMAIN}"), ips=(self.host_ip,))
        identities = {
            "admin": ("kubernetes-admin", ("system:masters",)),
            "controller-manager": ("system:kube-controller-manager", ()),
            "scheduler": ("system:kube-scheduler", ()),
            "metrics-server": (addons.METRICS_USER, ()),
            "kube-proxy": (addons.KUBE_PROXY_USER, ()),
        }
        for name, (user, groups) in identities.items():
            pair: KeyPair = ca.issue(name, user, organizations=groups, client=True)
            write_kubeconfig(self.workdir / "kubeconfigs" / f"{name}.conf", server=self.server,
                             ca_cert=self.ca_cert, client_cert=pair.cert, client_key=pair.key,
                             user=user)
        if self.audit:
            (self.workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)

    def _kubeconfig(self, name: str) -> str:
        return str(self.workdir / "kubeconfigs" / f"{name}.conf")

    def _etcd_argv(self, bins: Path) -> list[str]:
        pki, client_url = self.pki, f"https://127.0.0.1:{self.ports['etcd']}"
        peer_url = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        return [str(bins / "etcd"), "--name=default", f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}", f"--advertise-client-urls={client_url}",
                # One member: its peer port is never dialled by another, loopback plaintext.
                f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                f"--cert-file={pki / 'etcd-server.crt'}", f"--key-file={pki / 'etcd-server.key'}",
                f"--trusted-ca-file={pki / 'etcd-ca.crt'}", "--client-cert-auth=true",
                # A test cluster lives minutes and is thrown away: durability buys nothing,
                # and fsync latency on shared CI disks is what makes API calls slow.
                "--unsafe-no-fsync=true", "--log-level=warn"]

    def _apiserver_argv(self, bins: Path) -> list[str]:
        pki = self.pki
        argv = [
            str(bins / "kube-apiserver"),
            f"--advertise-address={self.host_ip}", f"--bind-address={self.host_ip}",
            f"--secure-port={APISERVER_PORT}",
            f"--etcd-servers=https://127.0.0.1:{self.ports['etcd']}",
            f"--etcd-cafile={pki / 'etcd-ca.crt'}",
            f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
            f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname,ExternalIP",
            f"--service-cluster-ip-range={self.service_cidr}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC",
            # On top of the default set (NamespaceLifecycle, ServiceAccount, PodSecurity,
            # the admission webhooks, ResourceQuota, ...).
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            "--allow-privileged=true",
            # Webhooks and aggregated APIs are called at their endpoints' IPs, so the API
            # server needs no ClusterIP routing on the host.
            "--enable-aggregator-routing=true",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-username-headers=X-Remote-User",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--profiling=false",
        ]
        if self.audit:
            argv += [f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                     f"--audit-log-path={self.logs / 'audit.log'}",
                     "--audit-log-maxsize=200", "--audit-log-maxbackup=1"]
        return argv

    def _serving_flags(self, name: str, kubeconfig: str) -> list[str]:
        pki = self.pki
        return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1",
                f"--secure-port={self.ports[name]}",
                f"--tls-cert-file={pki / f'{name}-serving.crt'}",
                f"--tls-private-key-file={pki / f'{name}-serving.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                "--leader-elect=false", "--profiling=false"]

    def _controller_manager_argv(self, bins: Path) -> list[str]:
        pki = self.pki
        argv = [str(bins / "kube-controller-manager"),
                *self._serving_flags("kube-controller-manager",
                                     self._kubeconfig("controller-manager")),
                "--cluster-name=mailwarden", "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={self.service_cidr}"]
        if self.allocate_node_cidrs:
            argv += ["--allocate-node-cidrs=true", f"--cluster-cidr={self.cluster_cidr}",
                     f"--node-cidr-mask-size={self.node_cidr_mask_size}"]
        return argv + list(self.controller_manager_args)

    def _scheduler_argv(self, bins: Path) -> list[str]:
        return [str(bins / "kube-scheduler"),
                *self._serving_flags("kube-scheduler", self._kubeconfig("scheduler"))]

    def _metrics_server_argv(self, bins: Path) -> list[str]:
        pki, kubeconfig = self.pki, self._kubeconfig("metrics-server")
        return [str(bins / "metrics-server"), f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--bind-address={self.host_ip}", f"--secure-port={METRICS_SERVER_PORT}",
                f"--tls-cert-file={pki / 'metrics-server-serving.crt'}",
                f"--tls-private-key-file={pki / 'metrics-server-serving.key'}",
                # The node agents' kubelet endpoints are not verified (test cluster; the
                # upstream manifests' --kubelet-insecure-tls); metrics-server still presents
                # its client certificate to them.
                "--kubelet-insecure-tls", "--kubelet-use-node-status-port",
                "--kubelet-preferred-address-types=InternalIP,Hostname,ExternalIP",
                f"--metric-resolution={self.metrics_resolution}"]

    def _save_state(self, stopped: bool = False) -> None:
        state = {"host_ip": self.host_ip, "owns_host_ip": self._owns_host_ip,
                 "server": self.server, "kubeconfig": str(self.kubeconfig),
                 "service_cidr": self.service_cidr, "cluster_cidr": self.cluster_cidr,
                 "node_cidr_mask_size": self.node_cidr_mask_size, "dns_ip": self.dns_ip,
                 "ports": self.ports, "stopped": stopped,
                 "components": {n: c.state() for n, c in self.components.items()}}
        tmp = self.workdir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.workdir / "state.json")
