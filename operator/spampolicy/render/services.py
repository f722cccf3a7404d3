"""A ClusterIP Service (one stable address) and a headless Service (per-pod addresses, so
clients balance each request across pods instead of pinning one HTTP/2 connection)."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.spampolicy import naming


def _ports(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """gRPC and metrics, then each mail-server protocol of `spec.protocols` (MTAs use the
    ClusterIP Service: kube-proxy spreads their connections over ready pods)."""
    return [
        {"name": "grpc", "port": naming.GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
         "appProtocol": "kubernetes.io/h2c"},
        {"name": "metrics", "port": naming.METRICS_PORT, "targetPort": "metrics",
         "protocol": "TCP", "appProtocol": "http"},
    ] + [{"name": protocol, "port": naming.MAIL_PROTOCOLS[protocol][1],
          "targetPort": protocol, "protocol": "TCP"}
         for protocol in naming.mail_protocols(spec)]


def render_service(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.child_metadata(owner, naming.workload_name(name),
                                          extra_labels={naming.SERVICE_ROLE_LABEL: "main"}),
        "spec": {"type": "ClusterIP", "selector": naming.selector_labels(name),
                 "ports": _ports(owner["spec"])},
    }


def render_headless_service(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.child_metadata(owner, naming.headless_name(name),
                                          extra_labels={naming.SERVICE_ROLE_LABEL: "headless"}),
        "spec": {"type": "ClusterIP", "clusterIP": "None",
                 # Only ready pods: a client must never resolve a draining pod.
                 "publishNotReadyAddresses": False,
                 "selector": naming.selector_labels(name), "ports": _ports(owner["spec"])},
    }
