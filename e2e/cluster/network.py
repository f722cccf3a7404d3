"""The control plane's addresses: its one non-loopback address (host_ip) and free ports.

Kubernetes refuses loopback addresses in EndpointSlices, and the API server's own endpoint
(Service `default/kubernetes`) and metrics-server's (behind the APIService) are
EndpointSlices. So the cluster gets one address of its own, added to the `lo` device as a
/32 for its lifetime: local to this host (pods reach it through their route to the host),
not in 127.0.0.0/8, and gone when the cluster stops.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import subprocess
from pathlib import Path

HOST_NET = ipaddress.ip_network("10.200.0.0/16")


class NetworkError(RuntimeError):
    pass


def default_host_ip(workdir: Path) -> str:
    """An address in 10.200.0.0/16 derived from the workdir: the same workdir always gets the
    same address, two workdirs (two clusters on one machine) almost never share one."""
    digest = hashlib.sha256(str(workdir.resolve()).encode()).digest()
    offset = int.from_bytes(digest[:2], "big") % (HOST_NET.num_addresses - 2) + 1
    address = HOST_NET[offset]
    if int(address) & 0xFF in (0, 255):  # keep clear of .0/.255, which confuse people
        address = HOST_NET[offset ^ 0x01]
    return str(address)


def check_disjoint(**networks: str) -> None:
    """Refuse overlapping CIDRs (e.g. a Service CIDR that contains the host address): the
    cluster would route one kind of traffic as the other."""
    parsed = {name: ipaddress.ip_network(value, strict=False) for name, value in networks.items()}
    names = list(parsed)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if parsed[a].overlaps(parsed[b]):
                raise NetworkError(f"{a} {networks[a]} overlaps {b} {networks[b]}")


def _host_addresses() -> dict[str, str]:
    """Every IPv4 address on this host -> the device holding it."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    found = {}
    for link in json.loads(out):
        for info in link.get("addr_info", []):
            found[info["local"]] = link["ifname"]
    return found


def add_host_ip(address: str) -> bool:
    """Put `address`/32 on `lo`. True if this cluster owns it (added now, or left on `lo` by
    an earlier run of the same workdir); False if another device already holds it (then
    it is used but never removed)."""
    holder = _host_addresses().get(address)
    if holder == "lo":
        return True
    if holder is not None:
        return False
    result = subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise NetworkError(f"cannot add {address}/32 to lo (root needed): "
                           f"{result.stderr.strip()}")
    return True


def remove_host_ip(address: str) -> None:
    subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"],
                   capture_output=True, text=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the component binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0
