"""The store's Services: gRPC (ClusterIP; the API and metrics, cluster-internal only) and
HTTP (the one-click endpoint, to be published through an Ingress or Gateway)."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.naming import GROUP
from mailwarden_operator.unsubscribestore import naming

# Keys of spec.http.service.annotations last applied, so a key removed from the spec is
# removed from the Service too (a merge patch never drops map keys on its own).
MANAGED_ANNOTATIONS = f"{GROUP}/managed-annotations"


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
    extra = dict(service.get("annotations") or {})
    annotations = {**extra, MANAGED_ANNOTATIONS: ",".join(sorted(extra))}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.child_metadata(
            owner, naming.http_service_name(name),
            extra_labels={naming.SERVICE_ROLE_LABEL: "http"},
            annotations=annotations),
        "spec": {
            "type": service["type"],
            "selector": naming.selector_labels(name),
            "ports": [{"name": "http", "port": service["port"], "targetPort": "http",
                       "protocol": "TCP", "appProtocol": "http"}],
        },
    }


def annotation_removals(desired: dict[str, Any], current: dict[str, Any] | None) -> dict:
    """`desired` plus a null for every annotation the previous apply managed and the spec
    no longer lists (a JSON merge patch deletes keys set to null)."""
    if current is None:
        return desired
    before = ((current.get("metadata") or {}).get("annotations") or {}).get(
        MANAGED_ANNOTATIONS, "")
    wanted = desired["metadata"].get("annotations") or {}
    gone = [k for k in before.split(",") if k and k not in wanted]
    if not gone:
        return desired
    out = {**desired, "metadata": {**desired["metadata"],
                                   "annotations": {**wanted, **{k: None for k in gone}}}}
    return out
