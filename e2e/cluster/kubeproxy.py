"""kube-proxy for one node: its configuration, and the check that it has programmed its rules.

kube-proxy runs in nftables mode (its own `kube-proxy` tables; nothing else on the host is
touched) in the network namespace the node side chooses: a namespace of the test's own, or
the host's. One kube-proxy per network namespace: two would fight over the same tables. It
is told to leave host-wide settings alone (conntrack table size and timeouts, OOM score), so
running it changes nothing but its own tables.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def config(*, kubeconfig: Path, node_name: str, cluster_cidr: str, healthz_port: int,
           metrics_port: int) -> str:
    return yaml.safe_dump({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name,
        "mode": "nftables",
        "clusterCIDR": cluster_cidr,
        # NodePorts only on the node's own address, not on every address of the host.
        "nodePortAddresses": ["primary"],
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # 0 = leave the kernel's values: these sysctls are host-wide, not the node's.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "oomScoreAdj": 0,
    }, sort_keys=False)


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def rules_programmed(netns: str | None) -> str | None:
    """None once kube-proxy's nftables table exists in `netns` (its first full sync)."""
    result = subprocess.run(in_netns(netns, ["nft", "list", "table", "ip", "kube-proxy"]),
                            capture_output=True, text=True)
    if result.returncode == 0 and "chain services" in result.stdout:
        return None
    return f"no kube-proxy nftables table yet ({result.stderr.strip() or 'no services chain'})"


def cleanup(netns: str | None) -> None:
    """Remove the tables kube-proxy leaves behind (it never removes them itself); only its
    own tables, so other rules in the namespace are untouched."""
    for family in ("ip", "ip6"):
        subprocess.run(in_netns(netns, ["nft", "delete", "table", family, "kube-proxy"]),
                       capture_output=True, text=True)
