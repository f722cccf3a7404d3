"""With the real kube-proxy (nftables, host namespace) the agents leave the service variables
alone: pods reach the API server through the `kubernetes` Service's ClusterIP, and any
Service by its ClusterIP. A cluster of its own, on ranges distinct from the shared one."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from e2e.cluster import ControlPlane
from e2e.nodes import ClusterInfo, NodeAgents, NodeSpec, cluster_ranges
from tests.nodes.conftest import Cluster, wait_for
from tests.nodes.test_nodes import deployment, exec_py, pod, python_container, ready, \
    wait_pods_ready

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = Path(tmp_path_factory.mktemp("kube-proxy-cluster"))
    pods, services = cluster_ranges(workdir)
    with ControlPlane(workdir / "cp", cluster_cidr=pods, service_cidr=services) as cp:
        nodes = NodeAgents(workdir / "nodes", ClusterInfo.from_control_plane(cp),
                           [NodeSpec("px-a", "zone-a"), NodeSpec("px-b", "zone-b")],
                           kube_proxy=True)
        try:
            nodes.start()
            yield Cluster(cp=cp, nodes=nodes, api=cp.api_client())
        finally:
            nodes.stop()


def test_clusterip_services_and_the_kubernetes_service_work(proxied: Cluster) -> None:
    ns = "default"
    web = python_container("web", "import http.server as h; h.HTTPServer(('', 8080), "
                           "h.SimpleHTTPRequestHandler).serve_forever()",
                           readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1})
    proxied.apply([deployment("web", 2, [web]),
                   {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                    "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
                   pod("client", [python_container("client", "import time; time.sleep(3600)")])],
                  ns)
    wait_pods_ready(proxied, ns, "app=web", 2)
    wait_for(lambda: ready(proxied.core.read_namespaced_pod("client", ns)), 60, "client")
    svc = proxied.core.read_namespaced_service("web", ns)
    # kube-proxy programs a Service's endpoints a moment after they turn Ready.
    wait_for(lambda: exec_py(proxied, ns, "client", "import urllib.request\ntry:\n"
                             " print(urllib.request.urlopen('http://web/', timeout=5).status)\n"
                             "except OSError as e:\n print(e)").strip() == "200",
             30, "the ClusterIP to answer", interval=1)
    out = exec_py(proxied, ns, "client", """
import os, ssl, json, urllib.request
print(os.environ['KUBERNETES_SERVICE_HOST'])
print(urllib.request.urlopen('http://web/', timeout=5).status)
d = '/var/run/secrets/kubernetes.io/serviceaccount/'
ctx = ssl.create_default_context(cafile=d + 'ca.crt')
req = urllib.request.Request('https://kubernetes.default.svc/version',
                             headers={'Authorization': 'Bearer ' + open(d + 'token').read()})
print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])
""")
    host, status, version = out.split()
    assert host == proxied.core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert (status, version) == ("200", "v1.37.2")
    assert ipaddress.ip_address(svc.spec.cluster_ip) in ipaddress.ip_network(proxied.cp.service_cidr)
