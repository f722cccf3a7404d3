"""The KMock Kubernetes emulator, served over real HTTP from a background thread.

KMock 0.8 is a generic in-memory object store with watch streams. This subclass adds the
few API-server behaviours the operator relies on and that a real server always has:
`metadata.uid`, `creationTimestamp` and `generation` on create, `generation` bumped when
`spec` changes, PUT (replace), used by the kubernetes client's Lease lock, and a simplified
server-side apply (lists are atomic; a field another client changes loses its appliers'
ownership, as on a real server) with dry-run. It still has no resourceVersion conflicts,
no garbage collection, no admission, no label-selector filtering and no status-subresource
split (see docs/operator.md for what only a real cluster shows; tests/operator_cluster/
runs the operator against a real API server).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import dicts, enums, k8s

RESOURCES = {
    "v1/configmaps": ("ConfigMap", True),
    "v1/secrets": ("Secret", True),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", True),
    "v1/services": ("Service", True),
    "v1/events": ("Event", True),
    "v1/namespaces": ("Namespace", False),
    "apps/v1/deployments": ("Deployment", True),
    "autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", True),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", True),
    "coordination.k8s.io/v1/leases": ("Lease", True),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False),
}


VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


@dataclass(frozen=True)
class RequestRecord:
    """One served request, with what RBAC would judge it by."""
    method: str
    path: str
    agent: str
    watch: bool
    group: str | None       # None: not a resource request (discovery, /version)
    plural: str | None
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def verb(self) -> str:
        """The RBAC verb of the request."""
        if self.method == "GET":
            return "get" if self.name else ("watch" if self.watch else "list")
        return {"POST": "create", "PATCH": "patch", "PUT": "update",
                "DELETE": "delete" if self.name else "deletecollection"}[self.method]

    @property
    def resource(self) -> str:
        return f"{self.plural}/{self.subresource}" if self.subresource else str(self.plural)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServerEmulator(k8s.KubernetesEmulator):
    """KubernetesEmulator plus uid/creationTimestamp/generation bookkeeping and PUT."""

    _revision = 0

    def _next_revision(self) -> str:
        ApiServerEmulator._revision += 1
        return str(ApiServerEmulator._revision)

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        # KMock matches each request against its whole request history (O(n) per request,
        # which made a long test crawl). Keep only in-flight requests there, and our own
        # compact log of every request for the tests' assertions.
        inflight = self.__dict__.setdefault("_inflight", {})
        inflight[id(request)] = request
        self._requests[:] = [r for r in self._requests if id(r) in inflight]
        self.__dict__.setdefault("log", []).append(
            ("DRYRUN" if request.params.get("dryRun") else request.method.upper(),
             request.url.path,
             request.resource.group if request.resource is not None else None))
        self.__dict__.setdefault("detailed_log", []).append(RequestRecord(
            method=request.method.upper(), path=request.url.path,
            agent=request.headers.get("User-Agent", ""),
            watch=str(request.params.get("watch", "")).lower() in ("true", "1"),
            group=request.resource.group if request.resource is not None else None,
            plural=request.resource.plural if request.resource is not None else None,
            namespace=request.namespace, name=request.name,
            subresource=request.subresource))
        try:
            return await self._handle_request(request)
        finally:
            inflight.pop(id(request), None)

    async def _handle_request(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.method.upper() == "PUT" \
                and request.name is not None:
            return await self._replace(request)
        if request.resource is not None and request.method.upper() == "PATCH" \
                and request.name is not None and "apply-patch" in \
                request.headers.get("Content-Type", ""):
            return await self._server_side_apply(request)
        if request.resource is not None and request.action == enums.action.UPDATE \
                and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            before = copy.deepcopy(self._objects[key].raw) \
                if key in self._objects and not self._objects[key].deleted else None
            response = await self._update(request)
            if before is not None and key in self._objects and not self._objects[key].deleted \
                    and self._transfer_ownership(key, before, self._objects[key].raw):
                # A real server changes managedFields in the same write; here it is a second
                # step, so watchers (the operator's informers) get it as one more event.
                self._objects[key].patch({"metadata": {
                    "resourceVersion": self._next_revision()}})
                await self._buses[request.resource].put(
                    {"type": "MODIFIED", "object": self._objects[key].raw})
            return response
        return await self._update(request)

    async def _update(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.action == enums.action.CREATE \
                and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = self._next_revision()
        elif request.resource is not None and request.action == enums.action.UPDATE \
                and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            if key in self._objects and not self._objects[key].deleted:
                current = copy.deepcopy(self._objects[key].raw)
                try:
                    merged = dicts.patch_dict(copy.deepcopy(current), request.data)
                except Exception:  # a failing JSON-patch test: let KMock answer it
                    merged = current
                bump = {"resourceVersion": self._next_revision()}
                if request.subresource is None and merged.get("spec") != current.get("spec"):
                    bump["generation"] = current.get("metadata", {}).get("generation", 1) + 1
                if isinstance(request.data, dict):
                    request.data.setdefault("metadata", {}).update(bump)
                elif isinstance(request.data, list):
                    request.data.extend({"op": "add", "path": f"/metadata/{k}", "value": v}
                                        for k, v in bump.items())
        return await super()._handle(request)

    # -- server-side apply (simplified: lists are atomic) ----------------------------------

    def _field_sets(self) -> dict[Any, dict[str, Any]]:
        return self.__dict__.setdefault("_applied_fields", {})

    def _managed_fields(self, key: Any) -> list[dict[str, Any]]:
        return [{"manager": manager, "operation": "Apply", "apiVersion": "v1",
                 "fieldsType": "FieldsV1", "fieldsV1": fields}
                for (k, manager), fields in sorted(self._field_sets().items(),
                                                   key=lambda item: item[0][1])
                if k == key and fields]

    async def _server_side_apply(self, request: Any) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        manager = request.params.get("fieldManager", "")
        dry_run = request.params.get("dryRun") == "All"
        body = copy.deepcopy(request.data)
        body.get("metadata", {}).pop("managedFields", None)
        new_fields = _field_set(body)
        async with self._lock:
            exists = key in self._objects and not self._objects[key].deleted
            current = copy.deepcopy(self._objects[key].raw) if exists else None
            sets = self._field_sets()
            if current is None:
                obj = body
                meta = obj.setdefault("metadata", {})
                meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            else:
                obj = copy.deepcopy(current)
                others = [f for (k, m), f in sets.items() if k == key and m != manager]
                for path in _leaves(sets.get((key, manager), {})):
                    if path not in set(_leaves(new_fields)) and \
                            not any(_has_path(f, path) for f in others):
                        _remove_path(obj, path)
                obj = _merge(obj, body)
            if not dry_run:
                sets[(key, manager)] = new_fields
            managed = self._managed_fields(key)
            if dry_run:
                others = [{"manager": m, "operation": "Apply", "apiVersion": "v1",
                           "fieldsType": "FieldsV1", "fieldsV1": f}
                          for (k, m), f in sets.items() if k == key and m != manager]
                managed = sorted(others + [{"manager": manager, "operation": "Apply",
                                            "apiVersion": "v1", "fieldsType": "FieldsV1",
                                            "fieldsV1": new_fields}],
                                 key=lambda e: e["manager"])
            obj["metadata"]["managedFields"] = managed
            changed = current is None or _strip(obj) != _strip(current) or \
                (current.get("metadata") or {}).get("managedFields") != managed
            if changed:
                obj["metadata"]["resourceVersion"] = self._next_revision()
                if current is not None and obj.get("spec") != current.get("spec"):
                    obj["metadata"]["generation"] = \
                        current["metadata"].get("generation", 1) + 1
            if dry_run or not changed:
                return aiohttp.web.json_response(obj)
            if current is None:
                if key in self._objects:
                    self._objects[key].create(obj)
                else:
                    self._objects[key] = obj
                event = "ADDED"
            else:
                removals = {k: None for k in current if k not in obj}
                self._objects[key].patch({**removals, **_nulls_for_removed(current, obj)})
                event = "MODIFIED"
            raw = self._objects[key].raw
            await self._buses[request.resource].put({"type": event, "object": raw})
        return aiohttp.web.json_response(raw)

    def _transfer_ownership(self, key: Any, before: dict[str, Any],
                            after: dict[str, Any]) -> bool:
        """Another client changed fields: appliers lose ownership of what changed (True
        when something changed)."""
        changed = _changed_paths(_strip(before), _strip(after))
        if not changed:
            return False
        sets = self._field_sets()
        for (k, manager), fields in list(sets.items()):
            if k != key:
                continue
            for path in changed:
                _remove_path(fields, tuple(f"f:{p}" for p in path), prune=True)
        self._objects[key].patch({"metadata": {"managedFields": self._managed_fields(key)}})
        return True

    async def _replace(self, request: Any) -> aiohttp.web.StreamResponse:
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                return aiohttp.web.json_response({"kind": "Status", "code": 404}, status=404)
            obj = self._objects[key]
            current = obj.raw
            removals = {k: None for k in current if k not in request.data}
            request.data.setdefault("metadata", {})["resourceVersion"] = self._next_revision()
            obj.patch({**removals, **request.data})
            raw = obj.raw
            await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return aiohttp.web.json_response(raw)


def _field_set(obj: Any) -> dict[str, Any]:
    """The fields an applied configuration sets, as `fieldsV1` (lists atomic)."""
    if not isinstance(obj, dict):
        return {}
    return {f"f:{k}": _field_set(v) for k, v in obj.items()}


def _leaves(fields: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, sub in fields.items():
        out += _leaves(sub, prefix + (key,)) if sub else [prefix + (key,)]
    return out


def _has_path(fields: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = fields
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _remove_path(obj: Any, path: tuple[str, ...], prune: bool = False) -> None:
    """Remove `path` (of `f:` keys for field sets, plain keys for objects) from `obj`."""
    keys = [p[2:] if p.startswith("f:") and not prune else p for p in path]
    node = obj
    parents = []
    for part in keys[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        parents.append((node, part))
        node = node[part]
    if isinstance(node, dict):
        node.pop(keys[-1], None)
    if prune:  # drop parents left empty in a field set
        for parent, part in reversed(parents):
            if parent[part] == {}:
                parent.pop(part)


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(patch)


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items()
                       if k not in ("managedFields", "resourceVersion", "generation")}
    return out


def _changed_paths(before: Any, after: Any, prefix: tuple[str, ...] = ()
                   ) -> list[tuple[str, ...]]:
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key in set(before) | set(after):
            out += _changed_paths(before.get(key), after.get(key), prefix + (key,))
        return out
    return [] if before == after else [prefix]


def _nulls_for_removed(before: Any, after: Any) -> Any:
    """`after` as a KMock patch of `before`: keys `after` lacks become None."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return after
    out = {key: None for key in before if key not in after}
    for key, value in after.items():
        out[key] = _nulls_for_removed(before.get(key), value) if key in before else value
    return out


class EmulatorThread:
    """Runs the emulator and its HTTP server on 127.0.0.1 (ephemeral port) in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.emulator: ApiServerEmulator | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def __enter__(self) -> "EmulatorThread":
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the KMock emulator did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with ApiServerEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            for key, (kind, namespaced) in RESOURCES.items():
                emulator.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced,
                                                                verbs=VERBS)
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Any) -> Any:
        """Run `fn()` on the emulator's loop (the emulator is not thread-safe)."""
        async def wrapper() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(30)

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Declare a CRD's resource and store the CRD object (kopf waits for it)."""
        spec = crd["spec"]
        for version in spec["versions"]:
            key = f"{spec['group']}/{version['name']}/{spec['names']['plural']}"
            info = kmock.ResourceInfo(kind=spec["names"]["kind"],
                                      namespaced=spec["scope"] == "Namespaced",
                                      verbs=VERBS,
                                      subresources=set(version.get("subresources", {})))
            self.call(lambda: self.emulator.resources.__setitem__(key, info))
        body = copy.deepcopy(crd)
        self.call(lambda: self.emulator.objects.__setitem__(
            ("apiextensions.k8s.io/v1/customresourcedefinitions", None,
             crd["metadata"]["name"]), body))

    def requests(self) -> list[tuple[str, str, str | None]]:
        """Every request served so far: (METHOD, path, API group or None)."""
        return self.call(lambda: list(self.emulator.__dict__.get("log", [])))

    def detailed_requests(self) -> list[RequestRecord]:
        """Every request served so far, with its User-Agent and RBAC verb/resource."""
        return self.call(lambda: list(self.emulator.__dict__.get("detailed_log", [])))

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "kmock"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            "current-context": "kmock",
        }))
        return path
