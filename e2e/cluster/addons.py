"""Objects the control plane itself needs in the cluster: RBAC for the API server's kubelet
client and for metrics-server, and metrics-server's registration as the metrics.k8s.io
API (Service without selector + hand-made EndpointSlice + APIService), as the upstream
metrics-server manifests do for an in-cluster deployment.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Callable

from kubernetes import client
from kubernetes.client.rest import ApiException

METRICS_NAMESPACE = "kube-system"
METRICS_SERVICE = "metrics-server"
METRICS_USER = "system:metrics-server"
APISERVER_KUBELET_USER = "kube-apiserver-kubelet-client"
KUBE_PROXY_USER = "system:kube-proxy"
MANAGED_BY = "mailwarden-e2e-cluster"

Manifest = dict[str, Any]


def rbac() -> list[Manifest]:
    return [
        # The API server's client certificate for kubelets (logs, exec, port-forward).
        _cluster_role_binding("kube-apiserver-kubelet-client", "system:kubelet-api-admin",
                              APISERVER_KUBELET_USER),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:aggregated-metrics-reader", "labels": {
             "rbac.authorization.k8s.io/aggregate-to-view": "true",
             "rbac.authorization.k8s.io/aggregate-to-edit": "true",
             "rbac.authorization.k8s.io/aggregate-to-admin": "true"}},
         "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:metrics-server"},
         "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"]}]},
        _cluster_role_binding("system:metrics-server", "system:metrics-server", METRICS_USER),
        _cluster_role_binding("metrics-server:system:auth-delegator", "system:auth-delegator",
                              METRICS_USER),
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "metrics-server-auth-reader", "namespace": "kube-system"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "extension-apiserver-authentication-reader"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                       "name": METRICS_USER}]},
    ]


def metrics_registration(host_ip: str, port: int, ca_cert: Path) -> list[Manifest]:
    """metrics-server runs on the host at host_ip:port; the API server reaches it through
    the EndpointSlice (--enable-aggregator-routing), verifying it against `ca_cert`."""
    labels = {"app.kubernetes.io/name": "metrics-server",
              "app.kubernetes.io/managed-by": MANAGED_BY}
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": METRICS_SERVICE, "namespace": METRICS_NAMESPACE,
                      "labels": labels},
         "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP",
                             "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{METRICS_SERVICE}-host", "namespace": METRICS_NAMESPACE,
                      "labels": {**labels, "kubernetes.io/service-name": METRICS_SERVICE,
                                 "endpointslice.kubernetes.io/managed-by": MANAGED_BY}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [host_ip], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": "v1beta1.metrics.k8s.io", "labels": labels},
         "spec": {"group": "metrics.k8s.io", "version": "v1beta1",
                  "service": {"name": METRICS_SERVICE, "namespace": METRICS_NAMESPACE,
                              "port": 443},
                  "caBundle": base64.b64encode(ca_cert.read_bytes()).decode(),
                  "groupPriorityMinimum": 100, "versionPriority": 100}},
    ]


def _cluster_role_binding(name: str, role: str, user: str) -> Manifest:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": user}]}


def create_all(api: client.ApiClient, manifests: list[Manifest]) -> None:
    """Create each object; one that exists already is left as it is."""
    for manifest in manifests:
        try:
            _creator(api, manifest)(manifest)
        except ApiException as err:
            if err.status != 409:
                raise RuntimeError(f"creating {manifest['kind']} "
                                   f"{manifest['metadata']['name']}: {err.status} "
                                   f"{err.reason}: {err.body}") from err


def _creator(api: client.ApiClient, m: Manifest) -> Callable[[Manifest], Any]:
    ns = m["metadata"].get("namespace")
    rbac_api = client.RbacAuthorizationV1Api(api)
    creators: dict[str, Callable[[Manifest], Any]] = {
        "ClusterRole": lambda b: rbac_api.create_cluster_role(b),
        "ClusterRoleBinding": lambda b: rbac_api.create_cluster_role_binding(b),
        "RoleBinding": lambda b: rbac_api.create_namespaced_role_binding(ns, b),
        "Service": lambda b: client.CoreV1Api(api).create_namespaced_service(ns, b),
        "EndpointSlice": lambda b: client.DiscoveryV1Api(api)
        .create_namespaced_endpoint_slice(ns, b),
        "APIService": lambda b: client.ApiregistrationV1Api(api).create_api_service(b),
    }
    return creators[m["kind"]]


def api_service_available(api: client.ApiClient, name: str) -> str | None:
    """None when the APIService reports Available=True, else its condition's message."""
    try:
        svc = client.ApiregistrationV1Api(api).read_api_service(name)
    except ApiException as err:
        return f"APIService {name}: {err.status} {err.reason}"
    for cond in (svc.status and svc.status.conditions) or []:
        if cond.type == "Available":
            if cond.status == "True":
                return None
            return f"APIService {name} not available: {cond.reason}: {cond.message}"
    return f"APIService {name} has no Available condition yet"
