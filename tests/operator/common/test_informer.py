"""The informer cache's bookkeeping without a server: objects only move forward, deletions
are not undone by a late older copy, label selection and metadata-only storage. The watch
itself runs against a real API server in tests/operator_cluster/test_informer.py."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.informer import CachingKube, Informer
from mailwarden_operator.common.kube import CONFIGMAPS, SERVICES, SPAMPOLICIES

OURS = {"app.kubernetes.io/managed-by": "mailwarden-operator"}


def obj(name: str, version: int, labels: dict[str, str] | None = OURS,
        **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(version),
                         "labels": dict(labels or {})}, **extra}


def informer(**kwargs: Any) -> Informer:
    return Informer(None, SERVICES, None, OURS, **kwargs)  # type: ignore[arg-type]


def test_an_older_copy_never_replaces_a_newer_one() -> None:
    cache = informer()
    cache.put(obj("a", 10, spec={"v": "new"}))
    cache.put(obj("a", 9, spec={"v": "old"}))  # a watch event behind our own write
    assert cache.get("ns", "a")["spec"] == {"v": "new"}
    cache.put(obj("a", 11, spec={"v": "newer"}))
    assert cache.get("ns", "a")["spec"] == {"v": "newer"}


def test_a_deletion_is_not_undone_by_a_late_older_copy() -> None:
    cache = informer()
    cache.put(obj("a", 10))
    cache.remove(obj("a", 12))
    cache.put(obj("a", 10))
    cache.put(obj("a", 12))
    assert cache.get("ns", "a") is None
    cache.put(obj("a", 13))  # created again
    assert cache.get("ns", "a") is not None


def test_only_selected_objects_are_held_and_copies_are_handed_out() -> None:
    cache = informer()
    cache.put(obj("theirs", 5, labels={"team": "x"}))
    assert cache.get("ns", "theirs") is None
    cache.put(obj("a", 6))
    copy = cache.get("ns", "a")
    copy["metadata"]["labels"]["changed"] = "by the caller"
    assert "changed" not in cache.get("ns", "a")["metadata"]["labels"]
    # Losing the label drops it (the watch reports that as DELETED too).
    cache.put(obj("a", 7, labels={}))
    assert cache.get("ns", "a") is None
    assert [o["metadata"]["name"] for o in cache.list("ns", OURS)] == []


def test_metadata_only_keeps_no_data() -> None:
    cache = informer(metadata_only=True)
    cache.put(obj("cm", 3, data={"model": "x" * 1000}))
    held = cache.get("ns", "cm")
    assert held["metadata"]["name"] == "cm" and "data" not in held


class _NoServer(CachingKube):
    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.calls: list[tuple[str, str]] = []

    def _call(self, method: str, path: str, **_: Any) -> Any:
        self.calls.append((method, path))
        return None  # 'not found' for the reads below


def _synced(kube: CachingKube, res: Any, **kwargs: Any) -> Informer:
    cache = Informer(kube, res, None, kwargs.pop("labels", OURS), **kwargs)
    cache.synced.set()
    kube.informers.setdefault(res, []).append(cache)
    return cache


def test_reads_are_answered_from_a_synced_cache_and_misses_go_to_the_server() -> None:
    kube = _NoServer()
    services = _synced(kube, SERVICES)
    services.put(obj("a", 1))
    assert kube.get(SERVICES, "ns", "a")["metadata"]["name"] == "a"
    assert kube.calls == []
    assert kube.get(SERVICES, "ns", "missing") is None
    assert kube.calls == [("GET", "/api/v1/namespaces/ns/services/missing")]
    services.synced.clear()  # watch down: nothing is trusted
    kube.get(SERVICES, "ns", "a")
    assert len(kube.calls) == 2


def test_metadata_only_caches_serve_metadata_reads_only() -> None:
    kube = _NoServer()
    configmaps = _synced(kube, CONFIGMAPS, metadata_only=True)
    configmaps.put(obj("cm", 1, data={"k": "v"}))
    assert kube.get_metadata(CONFIGMAPS, "ns", "cm")["metadata"]["name"] == "cm"
    assert [o["metadata"]["name"] for o in kube.list_metadata(CONFIGMAPS, "ns", OURS)] == ["cm"]
    assert kube.calls == []
    kube.get(CONFIGMAPS, "ns", "cm")  # whole objects (a model ConfigMap's data) are read
    assert len(kube.calls) == 1


def test_owners_are_read_from_the_cache_only_when_asked() -> None:
    kube = _NoServer()
    policies = _synced(kube, SPAMPOLICIES, labels={})
    policies.put({"metadata": {"name": "p", "namespace": "ns", "resourceVersion": "4"}})
    assert kube.cached_get(SPAMPOLICIES, "ns", "p")["metadata"]["name"] == "p"
    assert kube.calls == []
    kube.get(SPAMPOLICIES, "ns", "p")  # event handlers: fresh
    assert len(kube.calls) == 1


def test_a_relist_keeps_a_write_newer_than_the_listing() -> None:
    class Lister:
        def list_with_version(self, *_: Any, **__: Any) -> tuple[list[dict[str, Any]], str]:
            return [obj("a", 5, spec={"v": "listed"}), obj("b", 5)], "6"

    cache = Informer(Lister(), SERVICES, None, OURS)  # type: ignore[arg-type]
    cache.put(obj("a", 7, spec={"v": "our write"}))
    cache.put(obj("gone", 3))
    assert cache._relist() == "6"
    assert cache.get("ns", "a")["spec"] == {"v": "our write"}
    assert cache.get("ns", "b") is not None and cache.get("ns", "gone") is None
