"""The kind provider: a kind cluster (e2e/kind.yaml: a control plane and three workers in two
zones) on Docker, the image built from the Dockerfile and loaded into every node, and
metrics-server from its release manifest. What e2e/run.sh did before the suite had two
providers; run.sh now selects this provider.

Environment: KEEP_CLUSTER=1 keeps the cluster afterwards, REUSE_CLUSTER=1 uses an existing
one of the same name (and keeps it); E2E_CLUSTER (mailwarden-e2e) names it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from e2e import prereqs
from e2e.providers.base import Cluster, Provider, ProviderError

REPO = Path(__file__).resolve().parents[2]
IMAGE = "mailwarden:e2e"
METRICS_SERVER_VERSION = "v0.7.2"
METRICS_SERVER_URL = ("https://github.com/kubernetes-sigs/metrics-server/releases/download/"
                      f"{METRICS_SERVER_VERSION}/components.yaml")
# kind's default pod subnet (kindnet): where pod traffic may come from when not masqueraded.
KIND_POD_SUBNET = "10.244.0.0/16"


def chart_image() -> str:
    """The image the chart (and the examples that pin one) use by default: the same build,
    tagged as the chart's appVersion, so the chart installs with its default values."""
    chart = yaml.safe_load((REPO / "charts" / "mailwarden" / "Chart.yaml").read_text())
    return f"ghcr.io/mailwarden/mailwarden:{chart['appVersion']}"


class KindProvider(Provider):
    name = "kind"

    def __init__(self) -> None:
        self.cluster_name = os.environ.get("E2E_CLUSTER", "mailwarden-e2e")
        self.keep = os.environ.get("KEEP_CLUSTER") == "1"
        self.reuse = os.environ.get("REUSE_CLUSTER") == "1"
        self.created = False
        self.kubeconfig: Path | None = None
        self.env: dict[str, str] = {}

    def skip_reason(self) -> str | None:
        problems = prereqs.missing_tools()
        return prereqs.SKIP_PREFIX + "; ".join(problems) if problems else None

    def _run(self, *argv: str, timeout: float = 1800, capture: bool = False) -> str:
        result = subprocess.run(list(argv), env=self.env, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL,
                                capture_output=capture)
        if result.returncode != 0:
            detail = (result.stderr or "").strip()[-2000:] if capture else ""
            raise ProviderError(f"{' '.join(argv)} exited {result.returncode} {detail}")
        return result.stdout if capture else ""

    def _clusters(self) -> list[str]:
        return self._run("kind", "get", "clusters", capture=True).split()

    def up(self, out: Path) -> Cluster:
        out.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = out / "kubeconfig"
        self.env = {**os.environ, "PATH": prereqs.tool_path(), "KUBECONFIG": str(self.kubeconfig)}
        name = self.cluster_name
        if name in self._clusters():
            if self.reuse:
                self._run("kind", "export", "kubeconfig", "--name", name,
                          "--kubeconfig", str(self.kubeconfig))
            else:
                self._run("kind", "delete", "cluster", "--name", name)
        if name not in self._clusters():
            self.kubeconfig.unlink(missing_ok=True)
            self.created = True
            self._run("kind", "create", "cluster", "--name", name, "--config",
                      str(REPO / "e2e" / "kind.yaml"), "--kubeconfig", str(self.kubeconfig),
                      "--wait", "300s")
        self._run("docker", "build", "-t", IMAGE, "-t", chart_image(), str(REPO))
        for image in (IMAGE, chart_image()):
            self._run("kind", "load", "docker-image", image, "--name", name)
        self._metrics_server()
        gateway, subnet = self._docker_network()
        return Cluster(provider=self.name, kubeconfig=self.kubeconfig, path=self.env["PATH"],
                       image=IMAGE, host_address=gateway,
                       pod_sources=(subnet, KIND_POD_SUBNET), audit_log=None)

    def _metrics_server(self) -> None:
        self._run("kubectl", "apply", "-f", METRICS_SERVER_URL)
        args = self._run("kubectl", "-n", "kube-system", "get", "deployment", "metrics-server",
                         "-o", "jsonpath={.spec.template.spec.containers[0].args}", capture=True)
        if "--kubelet-insecure-tls" not in args:  # kind's kubelets serve self-signed certs
            self._run("kubectl", "-n", "kube-system", "patch", "deployment", "metrics-server",
                      "--type=json", "-p", json.dumps([{
                          "op": "add", "path": "/spec/template/spec/containers/0/args/-",
                          "value": "--kubelet-insecure-tls"}]))
        self._run("kubectl", "-n", "kube-system", "rollout", "status",
                  "deployment/metrics-server", "--timeout=300s")

    def _docker_network(self) -> tuple[str, str]:
        """The kind network's gateway (this host, as pods see it) and its subnet."""
        info = json.loads(self._run("docker", "network", "inspect", "kind", capture=True))
        for config in info[0]["IPAM"]["Config"]:
            subnet = config.get("Subnet", "")
            if subnet and ipaddress.ip_network(subnet).version == 4:
                return config["Gateway"], subnet
        raise ProviderError("the docker network `kind` has no IPv4 subnet")

    def down(self) -> None:
        if self.keep or self.reuse:
            print(f"[e2e] cluster {self.cluster_name} kept; export KUBECONFIG={self.kubeconfig}"
                  f"; delete it with: kind delete cluster --name {self.cluster_name}")
            return
        if self.created:
            subprocess.run(["kind", "delete", "cluster", "--name", self.cluster_name],
                           env=self.env or None, capture_output=True, timeout=600)
            self.created = False

    def collect_logs(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if shutil.which("kind", path=prereqs.tool_path()):
            subprocess.run(["kind", "export", "logs", str(directory / "kind"), "--name",
                            self.cluster_name], env=self.env or None, capture_output=True,
                           timeout=600)
