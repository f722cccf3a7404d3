"""The chart's RBAC on a real API server with the OwnerReferencesPermissionEnforcement
admission plugin (as on OpenShift): the operator's children carry `blockOwnerDeletion`
owner references, which need `update` on the owner's `finalizers` subresource (issue 13
item 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import ControlPlane
from mailwarden_operator.common.kube import (
    CONFIGMAPS,
    SERVICES,
    SPAMPOLICIES,
    UNSUBSCRIBESTORES,
    Kube,
    KubeError,
    api_client_from_environment,
)
from mailwarden_operator.common.render import RenderSettings
from mailwarden_operator.spampolicy.render.deployment import render_deployment
from mailwarden_operator.spampolicy.render.services import render_service
from mailwarden_operator.spampolicy.spec import with_defaults
from mailwarden_operator.unsubscribestore.render.services import render_grpc_service
from mailwarden_operator.unsubscribestore.spec import with_defaults as store_defaults
from tests.operator_cluster.kubeapi import (
    RELEASE_NAMESPACE,
    chart_rbac,
    service_account_kubeconfig,
)

pytestmark = pytest.mark.slow


def admin(cp: ControlPlane) -> Kube:
    return Kube(api_client_from_environment(str(cp.kubeconfig)))


def operator_kube(cp: ControlPlane, tmp_path: Path) -> Kube:
    account = chart_rbac(cp)
    config = service_account_kubeconfig(cp, RELEASE_NAMESPACE, account,
                                        tmp_path / "operator.kubeconfig")
    return Kube(api_client_from_environment(str(config)))


def created(kube: Kube, body: dict[str, Any], namespace: str) -> dict[str, Any]:
    res = {"SpamPolicy": SPAMPOLICIES, "UnsubscribeStore": UNSUBSCRIBESTORES}[body["kind"]]
    return kube.create(res, namespace, body)


def test_chart_rbac_lets_the_operator_block_owner_deletion(
        control_plane: ControlPlane, crds_installed: list[str], namespace: str,
        tmp_path: Path) -> None:
    operator = operator_kube(control_plane, tmp_path)
    policy = created(admin(control_plane), {
        "apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
        "metadata": {"name": "inbound", "namespace": namespace},
        "spec": {"policy": {"rules": []}}}, namespace)
    policy["spec"] = with_defaults(policy["spec"])
    store = created(admin(control_plane), {
        "apiVersion": "mailwarden.dev/v1alpha1", "kind": "UnsubscribeStore",
        "metadata": {"name": "sup", "namespace": namespace},
        "spec": {"storage": {"type": "embedded"}, "replicas": {"min": 1, "max": 1}}},
        namespace)
    store["spec"] = store_defaults(store["spec"])
    children = [render_service(policy), render_grpc_service(store),
                {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {**render_service(policy)["metadata"], "name": "inbound-cm"}}]
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
        res = SERVICES if child["kind"] == "Service" else CONFIGMAPS
        try:
            operator.create(res, namespace, child)
        except KubeError as exc:
            raise AssertionError(f"{child['kind']} {child['metadata']['name']}: {exc}") \
                from None
    # The Deployment too, the child the garbage collector waits for in a foreground delete.
    from mailwarden_operator.common.kube import DEPLOYMENTS
    operator.create(DEPLOYMENTS, namespace,
                    render_deployment(policy, "0123456789abcdef", RenderSettings()))
