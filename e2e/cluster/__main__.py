"""`python -m e2e.cluster up|down|status|node-kubeconfig --workdir DIR`: the control plane
for humans (docs/control-plane.md). `up` leaves it running after the command returns."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from e2e.cluster.binaries import BinariesMissing
from e2e.cluster.controlplane import ControlPlane, ControlPlaneError
from e2e.cluster.network import NetworkError

DEFAULT_WORKDIR = Path("/tmp/mailwarden-cluster")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help=f"where PKI, kubeconfigs, logs and etcd live "
                             f"(default {DEFAULT_WORKDIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a fresh control plane and leave it running")
    up.add_argument("--host-ip", help="the cluster's address (default: derived from the "
                                      "workdir, in 10.200.0.0/16)")
    up.add_argument("--service-cidr", default="10.96.0.0/16")
    up.add_argument("--cluster-cidr", default="10.244.0.0/16")
    up.add_argument("--node-cidr-mask-size", type=int, default=24)
    sub.add_parser("down", help="stop the control plane in --workdir")
    sub.add_parser("status", help="which components run, and where")
    node = sub.add_parser("node-kubeconfig",
                          help="make credentials for node NAME; print its kubeconfig's path")
    node.add_argument("name")
    node.add_argument("--ip", action="append", default=[],
                      help="an IP for the node's serving certificate (repeatable)")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ControlPlaneError, BinariesMissing, NetworkError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _up(args: argparse.Namespace) -> int:
    cp = ControlPlane(args.workdir, host_ip=args.host_ip, service_cidr=args.service_cidr,
                      cluster_cidr=args.cluster_cidr,
                      node_cidr_mask_size=args.node_cidr_mask_size)
    began = time.monotonic()
    cp.start(detach=True)
    print(f"control plane up in {time.monotonic() - began:.1f} s at {cp.server} "
          f"(logs in {cp.logs})", file=sys.stderr)
    for step, seconds in cp.startup.items():
        print(f"  {seconds:5.1f} s  {step}", file=sys.stderr)
    print(f"export KUBECONFIG={cp.kubeconfig} PATH={cp.bin_dir}:$PATH")
    return 0


def _down(args: argparse.Namespace) -> int:
    cp = ControlPlane.attach(args.workdir)
    cp.stop()
    print(f"control plane in {cp.workdir} stopped", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    cp = ControlPlane.attach(args.workdir)
    states = cp.status()
    if not states:
        print(f"{cp.workdir}: stopped")
        return 3
    print(f"{cp.workdir}: server {cp.server}, kubeconfig {cp.kubeconfig}")
    for name, state in states.items():
        port = cp.ports.get(name)
        print(f"  {name:<24} {state}{f', port {port}' if port else ''}")
    return 0 if all(s.startswith("running") for s in states.values()) else 3


def _node_kubeconfig(args: argparse.Namespace) -> int:
    cp = ControlPlane.attach(args.workdir)
    print(cp.node_credentials(args.name, ips=args.ip).kubeconfig)
    return 0


COMMANDS = {"up": _up, "down": _down, "status": _status, "node-kubeconfig": _node_kubeconfig}

if __name__ == "__main__":
    sys.exit(main())
