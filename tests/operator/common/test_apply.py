"""Server-side apply decisions: when a request is sent, with which manager and content.
(The API server's side — removed fields disappear, no write on a no-op, the HPA keeps the
replica count — is proven on a real one in tests/operator_cluster/test_apply.py.)"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mailwarden_operator.common.apply import (
    INITIAL_REPLICAS_MANAGER,
    Applier,
    ForeignObject,
    ensure_exists,
)
from mailwarden_operator.common.kube import DEPLOYMENTS, FIELD_MANAGER, SERVICES, Resource

OWNER = {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy", "name": "mail",
         "uid": "u-1", "controller": True, "blockOwnerDeletion": True}


def deployment(replicas: int = 2, **pod: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "mail-filter", "namespace": "ns", "ownerReferences": [OWNER]},
            "spec": {"replicas": replicas, "template": {"spec": dict(pod)}}}


class FakeKube:
    """Records requests; answers applies with the object and a managedFields entry."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.dry_run_result: dict[str, Any] | None = None

    def get(self, res: Resource, namespace: str | None, name: str) -> None:
        self.calls.append(("get", name, {}))

    def get_metadata(self, res: Resource, namespace: str | None, name: str) -> Any:
        return self.get(res, namespace, name)

    def server_side_apply(self, res: Resource, namespace: str | None, name: str,
                          body: dict[str, Any], *, field_manager: str = FIELD_MANAGER,
                          force: bool = True, dry_run: bool = False) -> dict[str, Any]:
        self.calls.append(("dry-run" if dry_run else f"apply:{field_manager}", name, body))
        if dry_run and self.dry_run_result is not None:
            return self.dry_run_result
        return with_fields(body, {"f:spec": {"f:template": {}}})

    def json_patch(self, res: Resource, namespace: str | None, name: str,
                   ops: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(("json-patch", name, {"ops": ops}))
        return {"metadata": {"managedFields": ops[-1]["value"]}}

    def create(self, res: Resource, namespace: str | None, body: dict[str, Any]) -> dict:
        self.calls.append(("create", body["metadata"]["name"], body))
        return body

    def writes(self) -> list[str]:
        return [c[0] for c in self.calls if c[0] not in ("get", "dry-run")]


def with_fields(obj: dict[str, Any], fields: dict[str, Any],
                manager: str = FIELD_MANAGER) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"]["managedFields"] = [{"manager": manager, "operation": "Apply",
                                         "fieldsV1": fields}]
    return out


def test_creation_hands_the_replica_count_to_its_own_manager() -> None:
    kube = FakeKube()
    outcome, _ = Applier(kube).apply(DEPLOYMENTS, deployment(), read=False)
    assert outcome == "created"
    first, handover, last = kube.calls
    assert first[0] == f"apply:{FIELD_MANAGER}" and first[2]["spec"]["replicas"] == 2
    assert handover[0] == f"apply:{INITIAL_REPLICAS_MANAGER}"
    assert handover[2]["spec"] == {"replicas": 2}
    assert last[0] == f"apply:{FIELD_MANAGER}" and "replicas" not in last[2]["spec"]


def test_other_kinds_are_created_with_one_apply() -> None:
    kube = FakeKube()
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "s", "namespace": "ns", "ownerReferences": [OWNER]},
               "spec": {"ports": []}}
    Applier(kube).apply(SERVICES, service, read=False)
    assert kube.writes() == [f"apply:{FIELD_MANAGER}"]


def test_nothing_is_sent_while_config_and_our_fields_are_unchanged() -> None:
    kube = FakeKube()
    applier = Applier(kube)
    _, created = applier.apply(DEPLOYMENTS, deployment(), read=False)
    kube.calls.clear()
    # The HPA scaled to 7: not ours, not drift.
    current = with_fields({**deployment(7)}, {"f:spec": {"f:template": {}}})
    assert applier.apply(DEPLOYMENTS, deployment(), current=current)[0] == "unchanged"
    assert kube.calls == []


def test_a_changed_config_or_a_taken_field_is_applied() -> None:
    kube = FakeKube()
    applier = Applier(kube)
    applier.apply(DEPLOYMENTS, deployment(), read=False)
    ours = {"f:spec": {"f:template": {}}}
    kube.calls.clear()
    changed = deployment(nodeSelector={"zone": "a"})
    assert applier.apply(DEPLOYMENTS, changed, current=with_fields(deployment(), ours))[0] \
        == "applied"
    applied = kube.calls[-1][2]
    assert applied["spec"]["template"]["spec"] == {"nodeSelector": {"zone": "a"}}
    assert "replicas" not in applied["spec"]
    # Someone else changed a field of ours: it is no longer in our set, so we apply.
    kube.calls.clear()
    assert applier.apply(DEPLOYMENTS, changed, current=with_fields(deployment(), {}))[0] \
        == "applied"


def test_a_seen_copy_saves_the_read_but_a_stale_one_never_writes() -> None:
    """Issue 13 item 18: a Deployment watch event's body spares the GET when it shows the
    object as we left it. An older event's body (our fields from before the last apply,
    seen on the real control plane while a Deployment was being created) must not lead to
    an apply: a fresh read decides."""
    kube = FakeKube()
    applier = Applier(kube)
    applier.apply(DEPLOYMENTS, deployment(), read=False)
    kube.calls.clear()
    ours = {"f:spec": {"f:template": {}}}
    assert applier.apply(DEPLOYMENTS, deployment(), seen=with_fields(deployment(), ours)) \
        [0] == "unchanged"
    assert kube.calls == []
    stale = with_fields(deployment(), {"f:spec": {"f:replicas": {}, "f:template": {}}})
    fresh = with_fields(deployment(), ours)
    kube.get = lambda res, ns, name: (kube.calls.append(("get", name, {})), fresh)[1]
    assert applier.apply(DEPLOYMENTS, deployment(), seen=stale)[0] == "unchanged"
    assert [c[0] for c in kube.calls] == ["get"]


def test_without_memory_a_dry_run_decides() -> None:
    ours = {"f:spec": {"f:template": {}}}
    current = with_fields(deployment(5), ours)
    current["metadata"]["resourceVersion"] = "7"
    kube = FakeKube()
    kube.dry_run_result = copy.deepcopy(current)
    applier = Applier(kube)
    assert applier.apply(DEPLOYMENTS, deployment(), current=current)[0] == "unchanged"
    assert kube.writes() == [] and [c[0] for c in kube.calls] == ["dry-run"]
    # Remembered now: the next reconcile does not even dry-run.
    kube.calls.clear()
    assert applier.apply(DEPLOYMENTS, deployment(), current=current)[0] == "unchanged"
    assert kube.calls == []
    # A dry run that would change something: apply.
    kube2 = FakeKube()
    kube2.dry_run_result = with_fields(deployment(5, nodeSelector={"a": "b"}), ours)
    assert Applier(kube2).apply(DEPLOYMENTS, deployment(), current=current)[0] == "applied"
    assert kube2.writes() == [f"apply:{FIELD_MANAGER}"]


def test_a_foreign_object_is_never_adopted() -> None:
    kube = FakeKube()
    foreign = deployment()
    foreign["metadata"]["ownerReferences"] = []
    with pytest.raises(ForeignObject, match="already exists and is not managed"):
        Applier(kube).apply(DEPLOYMENTS, deployment(), current=foreign)
    other = deployment()
    other["metadata"]["ownerReferences"] = [{**OWNER, "uid": "u-2"}]
    with pytest.raises(ForeignObject, match="uid u-2"):
        Applier(kube).apply(DEPLOYMENTS, deployment(), current=other)
    assert kube.writes() == []
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "cm", "namespace": "ns", "ownerReferences": [OWNER]}}

    class Existing(FakeKube):
        def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
            return {**cm, "metadata": {"name": "cm", "namespace": "ns"}}
    with pytest.raises(ForeignObject):
        ensure_exists(Existing(), Resource("", "v1", "configmaps", "ConfigMap"), cm)


def test_fields_written_before_server_side_apply_become_ours_except_replicas() -> None:
    kube = FakeKube()
    legacy = deployment(3, nodeSelector={"old": "x"})
    legacy["metadata"]["resourceVersion"] = "9"
    legacy["metadata"]["managedFields"] = [
        {"manager": "OpenAPI-Generator", "operation": "Update", "apiVersion": "apps/v1",
         "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {
             "f:spec": {"f:nodeSelector": {"f:old": {}}}}}}},
        {"manager": "kube-controller-manager", "operation": "Update",
         "subresource": "status", "fieldsV1": {"f:status": {}}}]
    assert Applier(kube).apply(DEPLOYMENTS, deployment(), current=legacy)[0] == "applied"
    patch, apply = kube.calls[0], kube.calls[1]
    assert patch[0] == "json-patch"
    test, replace = patch[2]["ops"]
    assert test == {"op": "test", "path": "/metadata/resourceVersion", "value": "9"}
    converted = replace["value"]
    assert converted[0]["manager"] == FIELD_MANAGER and converted[0]["operation"] == "Apply"
    assert converted[0]["fieldsV1"] == {"f:spec": {"f:template": {
        "f:spec": {"f:nodeSelector": {"f:old": {}}}}}}  # replicas left to others
    assert converted[1]["manager"] == "kube-controller-manager"  # untouched
    assert apply[0] == f"apply:{FIELD_MANAGER}"
