"""The KMock Kubernetes emulator, served over real HTTP from a background thread.

KMock 0.8 is a generic in-memory object store with watch streams. This subclass adds the
few API-server behaviours the operator relies on and that a real server always has:
`metadata.uid`, `creationTimestamp` and `generation` on create, `generation` bumped when
`spec` changes, and PUT (replace), used by the kubernetes client's Lease lock. It still has
no server-side apply, no resourceVersion conflicts, no garbage collection, no admission, no
label-selector filtering and no status-subresource split (see docs/operator.md for what only
a real cluster shows).
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
            (request.method.upper(), request.url.path,
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
