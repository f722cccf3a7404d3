"""The pod and Service ranges of a cluster of ours avoid what another cluster on this machine
already uses. Two suites side by side (other developers' on a shared machine, a leftover)
used to collide one time in sixteen on the Service range: the second cluster's DNS server
could not bind its address ("address already in use") and its nodes never came up."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from e2e.nodes.network import NetworkError, cluster_ranges, pick_ranges


def test_ranges_are_stable_per_workdir_and_differ_between_workdirs(tmp_path: Path) -> None:
    a, b = pick_ranges(tmp_path / "a", []), pick_ranges(tmp_path / "b", [])
    assert pick_ranges(tmp_path / "a", []) == a
    assert a != b
    pods, services = (ipaddress.ip_network(n) for n in a)
    assert pods.subnet_of(ipaddress.ip_network("10.128.0.0/10")) and pods.prefixlen == 18
    assert services.subnet_of(ipaddress.ip_network("10.96.0.0/12"))
    assert services.prefixlen == 20


def test_ranges_in_use_are_skipped(tmp_path: Path) -> None:
    pods, services = pick_ranges(tmp_path, [])
    dns = ipaddress.ip_network(services)[10]  # another cluster's DNS address there
    busy = [ipaddress.ip_network(pods), ipaddress.ip_network(f"{dns}/32")]
    other_pods, other_services = pick_ranges(tmp_path, busy)
    assert other_pods != pods and other_services != services
    everything = [ipaddress.ip_network("10.0.0.0/8")]
    with pytest.raises(NetworkError, match="in use on this host"):
        pick_ranges(tmp_path, everything)


def test_an_address_another_cluster_serves_dns_on_moves_the_service_range(
        tmp_path: Path) -> None:
    """On the host itself (root): the candidate's DNS address put on `lo`, as a running
    cluster's DNS has it, makes cluster_ranges pick another Service range."""
    first = cluster_ranges(tmp_path)[1]
    dns = f"{ipaddress.ip_network(first)[10]}/32"
    subprocess.run(["ip", "addr", "add", dns, "dev", "lo"], check=True, capture_output=True)
    try:
        assert cluster_ranges(tmp_path)[1] != first
    finally:
        subprocess.run(["ip", "addr", "del", dns, "dev", "lo"], capture_output=True)
