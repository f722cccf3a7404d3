"""The store's Services: gRPC (ClusterIP; the API and metrics, cluster-internal only) and
HTTP (the one-click endpoint, to be published through an Ingress or Gateway)."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.unsubscribestore import naming


def render_grpc_service(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.child_metadata(
            owner, naming.workload_name(name),
            extra_labels={naming.SERVICE_ROLE_LABEL: "main"}),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector_labels(name),
            "ports": [
                {"name": "grpc", "port": naming.GRPC_PORT, "targetPort": "grpc",
                 "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
                {"name": "metrics", "port": naming.METRICS_PORT,
                 "targetPort": "metrics", "protocol": "TCP", "appProtocol": "http"},
            ],
        },
    }


def render_http_service(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    service = owner["spec"]["http"]["service"]
    # A key removed from spec.http.service.annotations leaves the Service at the next
    # server-side apply (ours); annotations other controllers add stay.
    annotations = dict(service.get("annotations") or {})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.child_metadata(
            owner, naming.http_service_name(name),
            extra_labels={naming.SERVICE_ROLE_LABEL: "http"},
            annotations=annotations or None),
        "spec": {
            "type": service["type"],
            "selector": naming.selector_labels(name),
            "ports": [{"name": "http", "port": service["port"], "targetPort": "http",
                       "protocol": "TCP", "appProtocol": "http"}],
        },
    }
