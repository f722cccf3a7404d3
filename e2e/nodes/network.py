"""The host side of the pod network (root network namespace).

Each node agent routes its own pods (a veth and a /32 route per pod, see docs/node-agent.md);
what is shared lives here:

- IPv4 forwarding, so packets between pods (and from pods to host addresses) are routed;
- one address per node on `lo` (the Node's InternalIP, where its kubelet endpoint listens,
  reachable from the host and from pods), from a /24 derived from the workdir inside
  10.201.0.0/16 so two clusters on one machine do not collide;
- the cluster DNS address on `lo` (by convention the 10th address of the Service CIDR);
- `unreachable` routes for the cluster CIDR and, without kube-proxy, the Service CIDR: a
  packet for a pod IP that no pod holds, or for a ClusterIP nothing translates, fails at
  once instead of following the default route off the machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NODE_NET = ipaddress.ip_network("10.201.0.0/16")


class NetworkError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()} (root is needed)")
    return result


CLUSTER_SPACE = ipaddress.ip_network("10.128.0.0/10")
SERVICE_SPACE = ipaddress.ip_network("10.96.0.0/12")
CLUSTER_PREFIX = 18   # 64 nodes of /24 each
SERVICE_PREFIX = 20   # 4096 Service IPs


def node_block(workdir: Path) -> ipaddress.IPv4Network:
    """The /24 the nodes of the cluster in `workdir` take their addresses from."""
    digest = hashlib.sha256(str(workdir.resolve()).encode()).digest()
    third = digest[0] % 254 + 1
    return ipaddress.ip_network(f"10.201.{third}.0/24")


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route destination and address on this host: another cluster's pod range
    (its `unreachable` route, its pods' /32 routes) and Service range (its DNS address on
    `lo`) show up here."""
    nets = []
    routes = json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]")
    for route in routes:
        dst = route.get("dst")
        if dst and dst != "default":
            nets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    for link in json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]"):
        for addr in link.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{addr['local']}/32"))
    return nets


def pick_ranges(workdir: Path, in_use: list[ipaddress.IPv4Network]) -> tuple[str, str]:
    """(cluster CIDR, Service CIDR): the first of each space, starting at a place derived
    from the workdir, that meets nothing in `in_use`."""
    digest = hashlib.sha256(str(workdir.resolve()).encode()).digest()

    def first_free(space: ipaddress.IPv4Network, prefix: int, start: int) -> str:
        subnets = list(space.subnets(new_prefix=prefix))
        for i in range(len(subnets)):
            net = subnets[(start + i) % len(subnets)]
            if not any(net.overlaps(used) for used in in_use):
                return str(net)
        raise NetworkError(f"every /{prefix} of {space} is in use on this host")

    return (first_free(CLUSTER_SPACE, CLUSTER_PREFIX, int.from_bytes(digest[1:3], "big")),
            first_free(SERVICE_SPACE, SERVICE_PREFIX, int.from_bytes(digest[3:5], "big")))


def cluster_ranges(workdir: Path) -> tuple[str, str]:
    """(cluster CIDR, Service CIDR) for a control plane whose nodes are ours: a /18 of
    10.128.0.0/10 and a /20 of 10.96.0.0/12 (neither meets the control plane's host
    addresses, 10.200.0.0/16, or the nodes', 10.201.0.0/16), derived from the workdir and
    skipping ranges another cluster on this machine already routes or serves DNS in, so two
    suites side by side (a developer's beside another) never share pod IPs or DNS."""
    return pick_ranges(workdir, networks_in_use())


def _lo_addresses() -> set[str]:
    out = _ip("-j", "-4", "addr", "show", "dev", "lo").stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


def _routes(kind: str) -> set[str]:
    out = _ip("-j", "-4", "route", "show", "type", kind).stdout
    return {r["dst"] for r in json.loads(out or "[]")}


@dataclass
class HostNetwork:
    workdir: Path
    cluster_cidr: str
    service_cidr: str
    api_host: str
    dns_ip: str
    kube_proxy: bool = False
    _added_addrs: list[str] = field(default_factory=list)
    _added_routes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.block = node_block(self.workdir)

    def node_ip(self, index: int) -> str:
        return str(self.block[11 + index])

    def pod_routes(self) -> list[str]:
        """The destinations a pod can reach: pods, Services, the API server, the nodes."""
        routes = [self.cluster_cidr, self.service_cidr, str(self.block), f"{self.api_host}/32"]
        if ipaddress.ip_address(self.dns_ip) not in ipaddress.ip_network(self.service_cidr):
            routes.append(f"{self.dns_ip}/32")
        return routes

    def set_up(self, node_count: int) -> None:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        have = _lo_addresses()
        for ip in [self.node_ip(i) for i in range(node_count)] + [self.dns_ip]:
            if ip not in have:
                _ip("addr", "add", f"{ip}/32", "dev", "lo")
                self._added_addrs.append(ip)
        blocked = [self.cluster_cidr] + ([] if self.kube_proxy else [self.service_cidr])
        present = _routes("unreachable")
        for cidr in blocked:
            if str(ipaddress.ip_network(cidr)) not in present:
                _ip("route", "add", "unreachable", cidr)
                self._added_routes.append(cidr)

    def tear_down(self) -> None:
        for ip in self._added_addrs:
            _ip("addr", "del", f"{ip}/32", "dev", "lo", check=False)
        for cidr in self._added_routes:
            _ip("route", "del", "unreachable", cidr, check=False)
        self._added_addrs.clear()
        self._added_routes.clear()
