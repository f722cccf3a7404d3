"""Watch-fed, write-through caches of the objects every reconcile reads (issue 13 item 18).

A periodic resync reconciled each SpamPolicy with ~6 GETs (the policy, its Deployment, two
Services, HPA, PDB, policy ConfigMap) even when nothing had changed. An `Informer` keeps one
kind's objects in memory the way client-go's informers do — LIST once, then WATCH from that
resourceVersion (bookmarks on; a 410 Gone relists) — and `CachingKube` answers reads from
it, so a no-op reconcile asks the API server nothing.

Why the reads stay correct:
- write-through: every create/apply/patch result goes into the cache at once, so a
  reconcile right after our own write never sees the object as it was before (which would
  make the applier, seeing fields it no longer owns, write again);
- objects only move forward: an event or write result older (lower resourceVersion) than
  what the cache holds is ignored, and a deletion leaves a tombstone so a late older copy
  does not resurrect it;
- a miss is not trusted: an object the cache does not hold (not created yet, not labelled as
  ours, a foreign object with our child's name) is read from the API server, so the applier's
  ownership check still sees foreign objects;
- while a watch is down (connection lost, before the first LIST) the cache says it is not
  synced and every read goes to the API server; a watch silent for longer than the
  bookmark period (a connection dropped without a word) is resumed on a new connection;
- kopf's watch and ours deliver the same Deployment events in no fixed order: the
  Deployment handlers `observe` the event's copy before reconciling, so a reconcile never
  reports an older state than the event that triggered it;
- owners (SpamPolicy, UnsubscribeStore) are served from the cache only where the caller asks
  for it (`cached_get`: the periodic resync). Event handlers read them fresh, since the event
  that triggered them came through kopf's watch, which may be ahead of ours; a fresh read
  also refreshes the cache, so the resync never sees an owner older than one already acted on.
"""

from __future__ import annotations

import builtins
import copy
import json
import logging
import random
import threading
from typing import Any, Iterator

from urllib3.exceptions import ReadTimeoutError

from mailwarden_operator.common.kube import Kube, KubeError, Resource

log = logging.getLogger("mailwarden.operator.informer")

# The API server ends a watch after this many seconds; we then resume from the last
# resourceVersion seen (no relist).
WATCH_TIMEOUT_SECONDS = 290
# With bookmarks on, the API server's watch cache sends one about every minute even when
# nothing changes: this long without a byte means the connection is gone (a proxy or NAT
# that dropped it silently), and the watch resumes on a new one instead of waiting out
# the whole watch. TCP keepalive (api_client_from_environment) catches a dead peer too.
WATCH_READ_TIMEOUT_SECONDS = 150
MAX_BACKOFF_SECONDS = 10.0
REFUSED_RETRY_SECONDS = 60.0

Key = tuple[str, str]  # (namespace or "", name)


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _version(obj: dict[str, Any] | None) -> int | None:
    """The resourceVersion as a number (the API server's are etcd revisions), None when it
    is missing or opaque: then arrival order decides."""
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
    except (TypeError, ValueError):
        return None


def _older(candidate: dict[str, Any], than: int | None) -> bool:
    mine = _version(candidate)
    return mine is not None and than is not None and mine < than


class Informer(threading.Thread):
    """One kind in one namespace (or all), optionally label-selected."""

    def __init__(self, kube: Kube, res: Resource, namespace: str | None = None,
                 labels: dict[str, str] | None = None, *,
                 metadata_only: bool = False) -> None:
        super().__init__(name=f"informer-{res.plural}", daemon=True)
        self.kube = kube
        self.res = res
        self.namespace = namespace
        self.labels = dict(labels or {})
        # Only names, labels, owners and versions (PartialObjectMetadata): for ConfigMaps,
        # whose data (a model of megabytes) nothing needs from the cache.
        self.metadata_only = metadata_only
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._tombstones: dict[Key, int] = {}
        self._lock = threading.Lock()
        self._response: Any = None
        self._refused = False
        self.relists = 0

    # -- reads -----------------------------------------------------------------------------

    def covers(self, namespace: str | None) -> bool:
        return self.namespace is None or namespace == self.namespace

    def matches(self, obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in self.labels.items())

    def get(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of the cached object, or None (not held: not proof of absence)."""
        with self._lock:
            obj = self._objects.get((namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, namespace: str | None, labels: dict[str, str]) -> list[dict[str, Any]]:
        with self._lock:
            objs = [o for (ns, _), o in self._objects.items()
                    if namespace is None or ns == namespace]
        return [copy.deepcopy(o) for o in objs
                if all(((o.get("metadata") or {}).get("labels") or {}).get(k) == v
                       for k, v in labels.items())]

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    # -- writes (watch events and write-through) --------------------------------------------

    def put(self, obj: dict[str, Any]) -> None:
        if self.metadata_only:
            obj = {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": obj.get("metadata") or {}}
        key = _key(obj)
        if not self.matches(obj):
            # No longer selected (a label removed): the watch says DELETED too.
            self.forget(key)
            return
        with self._lock:
            if _older(obj, _version(self._objects.get(key))) or \
                    _older(obj, self._tombstones.get(key)):
                return
            if _version(obj) is not None and _version(obj) == self._tombstones.get(key):
                return
            self._tombstones.pop(key, None)
            self._objects[key] = obj

    def remove(self, obj: dict[str, Any]) -> None:
        key = _key(obj)
        with self._lock:
            if _older(obj, _version(self._objects.get(key))):
                return  # deleted and created again meanwhile
            self._objects.pop(key, None)
            version = _version(obj)
            if version is not None:
                self._tombstones[key] = version

    def forget(self, key: Key) -> None:
        with self._lock:
            self._objects.pop(key, None)

    # -- the LIST + WATCH loop ---------------------------------------------------------------

    def run(self) -> None:
        backoff = 0.5
        version: str | None = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    version = self._relist()
                    self.synced.set()
                version = self._watch(version)
                backoff = 0.5
            except KubeError as exc:
                if self.stopping.is_set():
                    break
                self.synced.clear()  # reads go to the API server until we are back
                if exc.status == 410:
                    version = None  # too old to resume: relist
                    continue
                if exc.status in (403, 404):
                    # No CRD yet (helm upgrade does not add CRDs) or no list/watch grant:
                    # reads go to the API server; say so once, look again now and then.
                    if not self._refused:
                        log.warning("cannot watch %s (%s): reading them from the API "
                                    "server instead", self.res.plural, exc)
                    self._refused = True
                    self.stopping.wait(REFUSED_RETRY_SECONDS)
                    version = None
                    continue
                log.warning("watch of %s failed (%s); retrying in %.1f s", self.res.plural,
                            exc, backoff)
                self.stopping.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                version = None
            except Exception:  # never let the thread die: reads would silently go stale
                if self.stopping.is_set():
                    break
                self.synced.clear()
                log.exception("watch of %s failed; relisting", self.res.plural)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                version = None

    def _accept(self, suffix: str) -> str | None:
        if not self.metadata_only:
            return None
        return f"application/json;as=PartialObjectMetadata{suffix};g=meta.k8s.io;v=v1"

    def _selector(self) -> builtins.list[tuple[str, str]]:
        if not self.labels:
            return []
        return [("labelSelector", ",".join(f"{k}={v}" for k, v in self.labels.items()))]

    def _relist(self) -> str:
        items, version = self.kube.list_with_version(self.res, self.namespace, self.labels,
                                                     accept=self._accept("List"))
        fresh = {_key(o): o for o in items if self.matches(o)}
        with self._lock:
            # A write-through copy newer than the listing (our write raced the LIST) stays.
            for key, held in self._objects.items():
                if key in fresh and _older(fresh[key], _version(held)):
                    fresh[key] = held
            self._objects = fresh
            self._tombstones.clear()
        self.relists += 1
        return version

    def _watch(self, version: str) -> str:
        query = [("watch", "true"), ("allowWatchBookmarks", "true"),
                 ("resourceVersion", version),
                 ("timeoutSeconds", str(WATCH_TIMEOUT_SECONDS))] + self._selector()
        self._response = response = self.kube.open_stream(
            self.res.path(self.namespace), query, read_timeout=WATCH_READ_TIMEOUT_SECONDS,
            accept=self._accept(""))
        try:
            for event in _events(response, self.res.plural):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise KubeError(int(obj.get("code") or 0),
                                    f"watch {self.res.plural}: {obj.get('message')}")
                if kind in ("ADDED", "MODIFIED"):
                    self.put(obj)
                elif kind == "DELETED":
                    self.remove(obj)
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if self.stopping.is_set():
                    break
        finally:
            self._response = None
            response.release_conn()
        return version

    def stop(self) -> None:
        self.stopping.set()
        response = self._response
        if response is not None:
            try:
                getattr(response, "shutdown", response.close)()  # unblocks the read
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass


def _events(response: Any, what: str = "objects") -> Iterator[dict[str, Any]]:
    """The watch's events as they arrive (one JSON document a line, a chunk each); a
    silent connection ends the stream (the caller resumes from the last version)."""
    buffer = b""
    try:
        for chunk in response.stream(amt=None, decode_content=False):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)
    except ReadTimeoutError:
        log.warning("the watch of %s was silent for %d s (no event, no bookmark): "
                    "resuming on a new connection", what, WATCH_READ_TIMEOUT_SECONDS)


class CachingKube(Kube):
    """Kube whose reads of cached kinds come from informers and whose writes feed them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.informers: dict[Resource, list[Informer]] = {}

    def cache(self, res: Resource, namespaces: list[str] | None = None,
              labels: dict[str, str] | None = None, *,
              metadata_only: bool = False) -> list[Informer]:
        """Start caching `res` (in `namespaces`, or everywhere)."""
        where: builtins.list[str | None] = list(namespaces) if namespaces else [None]
        started = [Informer(self, res, ns, labels, metadata_only=metadata_only)
                   for ns in where]
        self.informers.setdefault(res, []).extend(started)
        for informer in started:
            informer.start()
        return started

    def stop_informers(self) -> None:
        for informers in self.informers.values():
            for informer in informers:
                informer.stop()

    def wait_synced(self, timeout: float) -> bool:
        return all(i.synced.wait(timeout) for group in self.informers.values() for i in group)

    def _informer(self, res: Resource, namespace: str | None, *,
                  metadata: bool = False) -> Informer | None:
        """A synced informer holding `res` in `namespace` (whole objects unless
        `metadata`: then metadata-only ones do too)."""
        for informer in self.informers.get(res, ()):
            if informer.covers(namespace) and informer.synced.is_set() and \
                    (metadata or not informer.metadata_only):
                return informer
        return None

    def _store(self, res: Resource, obj: Any) -> None:
        if not isinstance(obj, dict) or not obj.get("metadata"):
            return
        for informer in self.informers.get(res, ()):
            if informer.covers((obj["metadata"]).get("namespace")):
                informer.put(obj)

    def observe(self, res: Resource, obj: dict[str, Any], *, deleted: bool = False) -> None:
        """kopf's watch and ours deliver the same events, in no fixed order: a handler
        triggered by kopf's must not then read an older copy from the cache (a store's
        status would say 'RollingOut, 0 available' until the next resync)."""
        obj = copy.deepcopy(obj)
        if not deleted:
            self._store(res, obj)
            return
        meta = obj.get("metadata") or {}
        for informer in self.informers.get(res, ()):
            if informer.covers(meta.get("namespace")):
                informer.remove(obj)

    # -- reads -------------------------------------------------------------------------------

    def cached_get(self, res: Resource, namespace: str | None,
                   name: str) -> dict[str, Any] | None:
        """From the cache when it holds the object, else from the API server (see the
        module docstring for why owners are read through this only on resync)."""
        informer = self._informer(res, namespace)
        if informer is not None:
            hit = informer.get(namespace, name)
            if hit is not None:
                return hit
        return self.get(res, namespace, name)

    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        if res.kind in OWNER_KINDS:
            obj = super().get(res, namespace, name)
            self._store(res, obj)
            return obj
        informer = self._informer(res, namespace)
        if informer is not None:
            hit = informer.get(namespace, name)
            if hit is not None:
                return hit
        obj = super().get(res, namespace, name)
        self._store(res, obj)
        return obj

    def get_metadata(self, res: Resource, namespace: str | None,
                     name: str) -> dict[str, Any] | None:
        informer = self._informer(res, namespace, metadata=True)
        if informer is not None and res.kind not in OWNER_KINDS:
            hit = informer.get(namespace, name)
            if hit is not None:
                return hit
        return self.get(res, namespace, name)

    def list_metadata(self, res: Resource, namespace: str | None,
                      labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        informer = self._informer(res, namespace, metadata=True)
        if informer is not None and res.kind not in OWNER_KINDS and \
                all((labels or {}).get(k) == v for k, v in informer.labels.items()):
            # The informer's selector is part of `labels`: it holds every match.
            return informer.list(namespace, labels or {})
        return self.list(res, namespace, labels)

    # -- writes ------------------------------------------------------------------------------

    def create(self, res: Resource, namespace: str | None, body: dict[str, Any]) -> dict:
        result = super().create(res, namespace, body)
        self._store(res, result)
        return result

    def merge_patch(self, res: Resource, namespace: str | None, name: str, patch: dict,
                    **kwargs: Any) -> dict:
        result = super().merge_patch(res, namespace, name, patch, **kwargs)
        self._store(res, result)
        return result

    def server_side_apply(self, res: Resource, namespace: str | None, name: str,
                          body: dict[str, Any], **kwargs: Any) -> dict:
        result = super().server_side_apply(res, namespace, name, body, **kwargs)
        if not kwargs.get("dry_run"):
            self._store(res, result)
        return result

    def json_patch(self, res: Resource, namespace: str | None, name: str,
                   operations: Any) -> dict:
        result = super().json_patch(res, namespace, name, operations)
        self._store(res, result)
        return result

    def delete(self, res: Resource, namespace: str | None, name: str) -> None:
        super().delete(res, namespace, name)
        for informer in self.informers.get(res, ()):
            if informer.covers(namespace):
                informer.forget((namespace or "", name))


OWNER_KINDS = frozenset({"SpamPolicy", "UnsubscribeStore"})


def start_informers(kube: CachingKube, namespaces: list[str] | None) -> None:
    """What every reconcile reads: the owners, and the children we label as ours (the
    ConfigMaps by metadata only: their data can be a model of megabytes)."""
    from mailwarden_operator.common.kube import (
        CONFIGMAPS,
        DEPLOYMENTS,
        HPAS,
        PDBS,
        SERVICES,
        SPAMPOLICIES,
        UNSUBSCRIBESTORES,
    )
    from mailwarden_operator.common.naming import MANAGED_BY, MANAGED_BY_LABEL

    ours = {MANAGED_BY_LABEL: MANAGED_BY}
    for res in (SPAMPOLICIES, UNSUBSCRIBESTORES):
        kube.cache(res, namespaces)
    for res in (DEPLOYMENTS, SERVICES, HPAS, PDBS):
        kube.cache(res, namespaces, ours)
    kube.cache(CONFIGMAPS, namespaces, ours, metadata_only=True)


class InformerThreads:
    """The informers as one of the operator's stoppable threads."""

    def __init__(self, kube: CachingKube) -> None:
        self.kube = kube

    def stop(self) -> None:
        self.kube.stop_informers()
