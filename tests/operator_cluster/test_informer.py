"""The operator's watch-fed caches (operator/common/informer.py, issue 13 item 18) against a
real API server: LIST + WATCH keep them current with what others change, our own writes
are visible at once (write-through), a read the cache can answer sends no request, a miss
(a foreign object with a child's name) still reaches the server, and ConfigMaps are held
by metadata only."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster import ControlPlane
from mailwarden_operator.common.informer import CachingKube
from mailwarden_operator.common.kube import CONFIGMAPS, SERVICES, api_client_from_environment
from tests.operator_cluster.kubeapi import wait_for

pytestmark = pytest.mark.slow

OURS = {"app.kubernetes.io/managed-by": "mailwarden-operator"}


class CountingKube(CachingKube):
    """Counts the requests that are not the informers' own LIST/WATCH."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests: list[str] = []

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        if not ("limit" in dict(kwargs.get("query") or []) and method == "GET"):
            self.requests.append(f"{method} {path}")
        return super()._call(method, path, **kwargs)


def service(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {"ports": [{"port": 80}], "selector": {"app": name}}}


def test_the_cache_follows_the_server_and_our_writes(control_plane: ControlPlane,
                                                     namespace: str) -> None:
    core = client.CoreV1Api(control_plane.api_client())
    core.create_namespaced_service(namespace, service("before", OURS))
    kube = CountingKube(api_client_from_environment(str(control_plane.kubeconfig)))
    kube.cache(SERVICES, [namespace], OURS)
    kube.cache(CONFIGMAPS, [namespace], OURS, metadata_only=True)
    try:
        assert kube.wait_synced(30)
        # Listed at the start: no request to read it.
        assert kube.get(SERVICES, namespace, "before")["spec"]["ports"][0]["port"] == 80
        assert kube.requests == []

        # Others' changes arrive by the watch.
        core.patch_namespaced_service("before", namespace,
                                      {"metadata": {"annotations": {"by": "someone"}}})
        wait_for("the change in the cache", lambda: (kube.get(
            SERVICES, namespace, "before")["metadata"].get("annotations") or {}).get("by")
            == "someone", timeout=20, interval=0.1)
        core.create_namespaced_service(namespace, service("later", OURS))
        wait_for("the new object in the cache", lambda: kube.informers[SERVICES][0].get(
            namespace, "later") is not None, timeout=20, interval=0.1)
        assert kube.requests == []

        # Our write is visible at once, before its watch event could have arrived.
        applied = kube.server_side_apply(SERVICES, namespace, "later", {
            **service("later", {**OURS, "v": "2"}),
            "metadata": {"name": "later", "namespace": namespace,
                         "labels": {**OURS, "v": "2"}}})
        assert kube.get(SERVICES, namespace, "later")["metadata"]["resourceVersion"] == \
            applied["metadata"]["resourceVersion"]
        assert kube.requests == [f"PATCH /api/v1/namespaces/{namespace}/services/later"]

        # A foreign object with our name is not in the cache: the read goes to the server,
        # so the applier's ownership check still sees it.
        core.create_namespaced_service(namespace, service("theirs", {"team": "x"}))
        theirs = kube.get(SERVICES, namespace, "theirs")
        assert theirs is not None and theirs["metadata"]["labels"] == {"team": "x"}
        assert kube.requests[-1] == f"GET /api/v1/namespaces/{namespace}/services/theirs"

        # Deleted by someone else: gone from the cache, and a read asks the server.
        core.delete_namespaced_service("before", namespace)
        wait_for("the deletion in the cache", lambda: kube.informers[SERVICES][0].get(
            namespace, "before") is None, timeout=20, interval=0.1)
        assert kube.get(SERVICES, namespace, "before") is None

        # ConfigMaps by metadata: the data (a model) is never held.
        core.create_namespaced_config_map(namespace, {
            "metadata": {"name": "policy-1", "labels": OURS}, "data": {"model": "x" * 100_000}})
        wait_for("the ConfigMap in the cache", lambda: kube.informers[CONFIGMAPS][0].get(
            namespace, "policy-1") is not None, timeout=20, interval=0.1)
        held = kube.informers[CONFIGMAPS][0].get(namespace, "policy-1")
        assert "data" not in held and held["metadata"]["labels"] == OURS
        before = len(kube.requests)
        assert kube.get_metadata(CONFIGMAPS, namespace, "policy-1") is not None
        assert [c["metadata"]["name"] for c in kube.list_metadata(
            CONFIGMAPS, namespace, OURS)] == ["policy-1"]
        assert len(kube.requests) == before
        assert kube.get(CONFIGMAPS, namespace, "policy-1")["data"]["model"] == "x" * 100_000
    finally:
        kube.stop_informers()
    started = time.monotonic()
    for informer in (i for group in kube.informers.values() for i in group):
        informer.join(10)
        assert not informer.is_alive(), "an informer did not stop"
    assert time.monotonic() - started < 10


def deployment_body(namespace: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "none"}]}}}}


def test_a_quiet_watch_resumes_and_status_changes_arrive(control_plane: ControlPlane,
                                                         crds_installed: list[str],
                                                         namespace: str,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """The Deployment controller's status reports (what a SpamPolicy's and an
    UnsubscribeStore's status are made of) reach the cache within seconds, also after the
    watch was silent for its whole read timeout (a dropped connection looks the same):
    it resumes from the last version seen, without a relist."""
    from mailwarden_operator.common import informer as informer_module
    from mailwarden_operator.common.informer import start_informers
    from mailwarden_operator.common.kube import DEPLOYMENTS

    monkeypatch.setattr(informer_module, "WATCH_READ_TIMEOUT_SECONDS", 2)
    kube = CountingKube(api_client_from_environment(str(control_plane.kubeconfig)))
    start_informers(kube, [namespace])
    try:
        assert kube.wait_synced(30)
        deployments = kube.informers[DEPLOYMENTS][0]
        time.sleep(5)  # nothing changes: the watch reads nothing for longer than 2 s
        for name, labels in (("mail-filter", {**OURS, "mailwarden.dev/spampolicy": "mail"}),
                             ("sup-unsubscribe", {**OURS,
                                                  "mailwarden.dev/unsubscribestore": "sup"})):
            created = kube.server_side_apply(DEPLOYMENTS, namespace, name,
                                             deployment_body(namespace, name, labels))
            assert not (created.get("status") or {}).get("observedGeneration")
            wait_for(f"the controller's status of {name} in the cache", lambda: (
                (deployments.get(namespace, name) or {}).get("status") or {})
                .get("replicas") == 1, timeout=10, interval=0.1)
        assert deployments.relists == 1, "a quiet watch was taken for a broken one"
        assert kube.requests == [f"PATCH /apis/apps/v1/namespaces/{namespace}/deployments/"
                                 f"{name}" for name in ("mail-filter", "sup-unsubscribe")]
    finally:
        kube.stop_informers()
