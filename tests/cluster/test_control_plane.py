"""The real control plane (e2e/cluster) does what a Kubernetes cluster does: these are the
behaviours Mailwarden relies on, checked against Kubernetes' own components."""

from __future__ import annotations

import subprocess
import time
import uuid
from typing import Any, Callable

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.cluster import ControlPlane, binaries

pytestmark = pytest.mark.slow


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(control_plane.api_client())
    core.create_namespace({"metadata": {"name": name}})
    return name


def api_error(call: Callable[[], Any]) -> ApiException:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value


def test_components_are_the_pinned_release(control_plane: ControlPlane) -> None:
    pinned = binaries.versions(control_plane.bin_dir)["kubernetes"]
    info = client.VersionApi(control_plane.api_client()).get_code()
    assert info.git_version == pinned
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        out = subprocess.run([str(control_plane.bin_dir / name), "--version"],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"Kubernetes {pinned}", name


def crd(description_on_metadata: bool) -> dict[str, Any]:
    metadata: dict[str, Any] = {"type": "object"}
    if description_on_metadata:
        metadata["description"] = "Standard object metadata."
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.mailwarden.dev"},
        "spec": {"group": "example.mailwarden.dev", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object", "properties": {
                         "metadata": metadata,
                         "spec": {"type": "object", "properties": {
                             "size": {"type": "integer"}}}}}}}]}}


def test_api_server_refuses_a_non_structural_crd(control_plane: ControlPlane) -> None:
    # Issue 13 item 1: a description on the root metadata node is refused by the API server.
    ext = client.ApiextensionsV1Api(control_plane.api_client())
    err = api_error(lambda: ext.create_custom_resource_definition(crd(True)))
    assert err.status == 422
    assert "must not specify anything other than name and generateName" in err.body
    # The same CRD without it is accepted and becomes Established.
    ext.create_custom_resource_definition(crd(False))
    try:
        def established() -> bool:
            found = ext.read_custom_resource_definition("widgets.example.mailwarden.dev")
            return any(c.type == "Established" and c.status == "True"
                       for c in (found.status.conditions or []))
        wait_for("the CRD to be Established", established)
    finally:
        ext.delete_custom_resource_definition("widgets.example.mailwarden.dev")


def test_deployment_makes_a_replicaset_and_pods_the_scheduler_sees(
        control_plane: ControlPlane, namespace: str) -> None:
    api = control_plane.api_client()
    labels = {"app": "web"}
    client.AppsV1Api(api).create_namespaced_deployment(namespace, {
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [
                     {"name": "web", "image": "mailwarden:e2e"}]}}}})
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    replicasets = wait_for("a ReplicaSet", lambda: apps.list_namespaced_replica_set(
        namespace).items)
    assert [o.kind for o in replicasets[0].metadata.owner_references] == ["Deployment"]
    pods = wait_for("2 pods", lambda: [p for p in core.list_namespaced_pod(namespace).items]
                    if len(core.list_namespaced_pod(namespace).items) == 2 else None)
    assert {p.metadata.owner_references[0].name for p in pods} == {replicasets[0].metadata.name}
    # No node has joined: the real scheduler marks them unschedulable, and they stay Pending.

    def unschedulable() -> list[Any] | None:
        found = core.list_namespaced_pod(namespace).items
        marked = [p for p in found if any(c.type == "PodScheduled" and c.status == "False"
                                          and c.reason == "Unschedulable"
                                          for c in (p.status.conditions or []))]
        return found if len(marked) == 2 else None
    for pod in wait_for("the scheduler to mark the pods Unschedulable", unschedulable):
        assert pod.status.phase == "Pending"
        # The ServiceAccount admission plugin and the token controller did their part.
        assert pod.spec.service_account_name == "default"
        assert any(v.projected for v in pod.spec.volumes)


def test_garbage_collector_deletes_what_an_owner_leaves(control_plane: ControlPlane,
                                                        namespace: str) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(namespace, {"metadata": {
        "name": "child", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                                             "name": "owner", "uid": owner.metadata.uid}]}})
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as err:
            return err.status == 404
        return False
    wait_for("the garbage collector to delete the child", child_gone)


def service_account_client(cp: ControlPlane, namespace: str, name: str) -> client.ApiClient:
    """A client holding a token the API server issued (TokenRequest) to `name`."""
    core = client.CoreV1Api(cp.api_client())
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 600}}).status.token
    config = client.Configuration(host=cp.server)
    config.ssl_ca_cert = str(cp.ca_cert)
    config.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(config)


def test_block_owner_deletion_needs_update_on_the_owners_finalizers(
        control_plane: ControlPlane, namespace: str) -> None:
    # Issue 13 item 4: OwnerReferencesPermissionEnforcement is on, as on OpenShift.
    api = control_plane.api_client()
    rbac = client.RbacAuthorizationV1Api(api)
    rules = [{"apiGroups": [""], "resources": ["configmaps"],
              "verbs": ["get", "list", "create", "update", "delete"]}]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "writer"}, "rules": rules})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "writer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer"},
        "subjects": [{"kind": "ServiceAccount", "name": "writer", "namespace": namespace}]})
    writer = client.CoreV1Api(service_account_client(control_plane, namespace, "writer"))
    owner = writer.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})

    def child(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": owner.metadata.uid, "blockOwnerDeletion": True}]}}
    err = api_error(lambda: writer.create_namespaced_config_map(namespace, child("blocked")))
    assert err.status == 403
    assert "cannot set blockOwnerDeletion if an ownerReference refers to a resource you " \
           "can't set finalizers on" in err.body

    rules.append({"apiGroups": [""], "resources": ["configmaps/finalizers"],
                  "verbs": ["update"]})
    rbac.replace_namespaced_role("writer", namespace,
                                 {"metadata": {"name": "writer"}, "rules": rules})

    def allowed() -> bool:
        try:
            writer.create_namespaced_config_map(namespace, child("allowed"))
        except ApiException as e:
            assert e.status == 403, e.body  # RBAC changes take a moment to be seen
            return False
        return True
    wait_for("the child to be accepted once finalizers may be updated", allowed, timeout=30)


def test_metrics_api_is_served_through_the_aggregator(control_plane: ControlPlane,
                                                      namespace: str) -> None:
    api = control_plane.api_client()
    service = client.ApiregistrationV1Api(api).read_api_service("v1beta1.metrics.k8s.io")
    assert {(c.type, c.status) for c in service.status.conditions} >= {("Available", "True")}
    # Through the front proxy to metrics-server, which authenticates the request headers and
    # asks the API server (SubjectAccessReview) whether the admin may list pod metrics.
    metrics = client.CustomObjectsApi(api)
    nodes = metrics.list_cluster_custom_object("metrics.k8s.io", "v1beta1", "nodes")
    assert nodes["kind"] == "NodeMetricsList"
    pods = metrics.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", namespace, "pods")
    assert pods["kind"] == "PodMetricsList"
    # A service account without RBAC on metrics.k8s.io is refused (the aggregated API is
    # authorized like any other).
    stranger = client.CustomObjectsApi(service_account_client(control_plane, namespace,
                                                              "stranger"))
    err = api_error(lambda: stranger.list_cluster_custom_object("metrics.k8s.io", "v1beta1",
                                                                "nodes"))
    assert err.status == 403


def test_node_identity_is_restricted_to_its_own_node(control_plane: ControlPlane) -> None:
    creds = control_plane.node_credentials("node-a", ips=["10.201.0.2"])
    from kubernetes import config as kube_config
    node_api = kube_config.new_client_from_config(config_file=str(creds.kubeconfig))
    core = client.CoreV1Api(node_api)
    try:
        def node(name: str) -> dict[str, Any]:
            return {"metadata": {"name": name, "labels": {
                "topology.kubernetes.io/zone": "zone-a"}}}
        core.create_node(node("node-a"))
        # NodeRestriction: a node may not create or change another node.
        err = api_error(lambda: core.create_node(node("node-b")))
        assert err.status == 403 and "node-b" in err.body
        # Node authorizer: a node reads only secrets its pods use.
        admin = client.CoreV1Api(control_plane.api_client())
        admin.create_namespaced_secret("default", {"metadata": {"name": "unrelated"},
                                                   "stringData": {"k": "v"}})
        err = api_error(lambda: core.read_namespaced_secret("unrelated", "default"))
        assert err.status == 403
        # nodeipam gives the node its pod CIDR from the cluster CIDR.
        cidr = wait_for("node-a's podCIDR", lambda: core.read_node("node-a").spec.pod_cidr)
        import ipaddress
        assert ipaddress.ip_network(cidr).subnet_of(
            ipaddress.ip_network(control_plane.cluster_cidr))
        assert ipaddress.ip_network(cidr).prefixlen == control_plane.node_cidr_mask_size
    finally:
        client.CoreV1Api(control_plane.api_client()).delete_node("node-a")
        node_api.close()
