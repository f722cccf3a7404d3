"""The real kube-proxy runs here: it routes a ClusterIP to a Service's endpoint (in a network
namespace this test makes, so the host's rules are untouched) and stops when the Service goes.
"""

from __future__ import annotations

import ipaddress
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kubernetes import client

from e2e.cluster import ControlPlane

pytestmark = pytest.mark.slow

BACKEND_PORT = 8080


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True)


@dataclass(frozen=True)
class Netns:
    name: str
    ip: str      # the namespace's address, where the backend listens


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A network namespace standing for a node: a veth pair to the host (so kube-proxy in
    it reaches the API server at host_ip) and an address of its own from 10.202.0.0/16.
    Deleting the namespace removes the pair and the host's route with it."""
    tag = uuid.uuid4().hex[:8]
    name, host_end = f"mwkp-{tag}", f"mwkp{tag[:6]}"
    subnet = ipaddress.ip_network(f"10.202.{random.randrange(1, 255)}.0/30")
    inside = str(subnet[2])
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
           "netns", name)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "route", "add", str(subnet), "dev", host_end)
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", f"{inside}/30", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"],
                    ["ip", "route", "add", "default", "dev", "eth0"]):
            sh("ip", "netns", "exec", name, *cmd)
        yield Netns(name, inside)
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def backend(netns: Netns) -> Iterator[None]:
    server = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-m",
                               "http.server", str(BACKEND_PORT), "--bind", netns.ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL)
    try:
        yield
    finally:
        server.kill()
        server.wait()


def fetch(netns: Netns, url: str) -> str | None:
    """The HTTP status line seen from inside `netns`, or None if nothing answered."""
    code = ("import urllib.request,sys\n"
            "try:\n"
            f"  r = urllib.request.urlopen({url!r}, timeout=2); print(r.status)\n"
            "except Exception as e: print('error', e)\n")
    out = subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    return out if out == "200" else None


def test_kube_proxy_routes_a_cluster_ip_to_its_endpoint(control_plane: ControlPlane,
                                                        netns: Netns, backend: None) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    name = f"echo-{uuid.uuid4().hex[:6]}"
    service = core.create_namespaced_service("default", {
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": BACKEND_PORT}]}})
    client.DiscoveryV1Api(control_plane.api_client()).create_namespaced_endpoint_slice(
        "default", {"metadata": {"name": name, "labels": {
            "kubernetes.io/service-name": name,
            "endpointslice.kubernetes.io/managed-by": "mailwarden-test"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [netns.ip], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}]})
    url = f"http://{service.spec.cluster_ip}:80/"
    assert fetch(netns, url) is None, "the ClusterIP answered before kube-proxy ran"

    # kube-proxy takes its node's IP from the Node object (and waits 30 s for it).
    core.create_node({"metadata": {"name": "proxy-node"}, "status": {
        "addresses": [{"type": "InternalIP", "address": netns.ip}]}})
    control_plane.start_kube_proxy("proxy-node", netns=netns.name)
    try:
        deadline = time.monotonic() + 60
        while fetch(netns, url) is None:
            assert time.monotonic() < deadline, f"{url} never answered through kube-proxy"
            time.sleep(1)

        core.delete_namespaced_service(name, "default")
        deadline = time.monotonic() + 60
        while fetch(netns, url) is not None:
            assert time.monotonic() < deadline, f"{url} still answers after the Service is gone"
            time.sleep(1)
    finally:
        control_plane.stop_kube_proxy("proxy-node")
        core.delete_node("proxy-node")
