"""A small, uniform client for the objects the operator reads and writes.

It uses the `kubernetes` client's ApiClient for configuration, authentication and HTTP, and
speaks JSON dicts (no model classes), so one code path serves every kind, custom or not.
Writes are server-side apply (children), create, JSON merge-patch (status) and delete; each
is counted (`on_write`) and made as field manager `mailwarden-operator`, with the User-Agent
`mailwarden-operator/<version>` (so audit logs and managedFields name us).
"""

from __future__ import annotations

import builtins
import json
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "mailwarden-operator"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("mailwarden")
    except PackageNotFoundError:
        return "unknown"


USER_AGENT = f"{FIELD_MANAGER}/{_version()}"
# RFC 6902 operations (a module-level name: inside Kube, `list` is a method).
JsonPatch = list[dict[str, Any]]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        if subresource:
            base += f"/{subresource}"
        return base


SPAMPOLICIES = Resource("mailwarden.dev", "v1alpha1", "spampolicies", "SpamPolicy")
UNSUBSCRIBESTORES = Resource("mailwarden.dev", "v1alpha1", "unsubscribestores",
                             "UnsubscribeStore")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
SERVICES = Resource("", "v1", "services", "Service")
EVENTS = Resource("", "v1", "events", "Event")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
PDBS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
SERVICEMONITORS = Resource("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor")
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")

BY_KIND = {r.kind: r for r in (SPAMPOLICIES, UNSUBSCRIBESTORES, CONFIGMAPS, SECRETS, PVCS,
                               SERVICES, EVENTS, DEPLOYMENTS, HPAS, PDBS, SERVICEMONITORS,
                               NETWORKPOLICIES)}


# Objects per LIST page (the API server's and client-go's informers use 500).
LIST_PAGE_SIZE = 500


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Kube:
    def __init__(self, api_client: k8s.ApiClient, *, timeout: float = 30.0,
                 on_write: Callable[[str, str], None] | None = None) -> None:
        self.api = api_client
        self.timeout = timeout
        self.on_write = on_write or (lambda verb, kind: None)
        self._discovery: dict[str, tuple[float, bool]] = {}

    def _call(self, method: str, path: str, *, body: Any = None,
              query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json", accept: str | None = None) -> Any:
        try:
            method, url, headers, body = self.api.param_serialize(
                method, path, query_params=query or [],
                header_params={"Accept": accept or "application/json",
                               "Content-Type": content_type},
                body=body, auth_settings=["BearerToken"])[:4]
            response = self.api.call_api(method, url, header_params=headers, body=body,
                                         _request_timeout=self.timeout)
            data = response.read()
        except ApiException as exc:
            raise KubeError(exc.status or 0, f"{method} {path}: {exc.status} "
                            f"{_reason(exc)}") from None
        except Exception as exc:  # connection refused, timeouts, TLS errors
            raise KubeError(0, f"{method} {path}: {exc}") from None
        if not 200 <= response.status <= 299:
            raise KubeError(response.status, f"{method} {path}: {response.status} "
                            f"{_message(data)}")
        return json.loads(data) if data else None

    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", res.path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def cached_get(self, res: Resource, namespace: str | None,
                   name: str) -> dict[str, Any] | None:
        """`get`, or a watch-fed copy where one is kept (informer.CachingKube)."""
        return self.get(res, namespace, name)

    def observe(self, res: Resource, obj: dict[str, Any], *, deleted: bool = False) -> None:
        """An object as another watch (kopf's) delivered it: a cache keeps it when it is
        newer than its own copy (informer.CachingKube); nothing to do here."""

    def get_metadata(self, res: Resource, namespace: str | None,
                     name: str) -> dict[str, Any] | None:
        """The object, or (from a metadata-only cache) at least its metadata."""
        return self.get(res, namespace, name)

    def list_metadata(self, res: Resource, namespace: str | None,
                      labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """`list`, or (from a metadata-only cache) at least every match's metadata."""
        return self.list(res, namespace, labels)

    def list(self, res: Resource, namespace: str | None,
             labels: dict[str, str] | None = None, *,
             page_size: int = LIST_PAGE_SIZE) -> list[dict[str, Any]]:
        """Every object (paginated: the API server builds a page at a time, not one
        response holding thousands of objects; an expired continue token restarts)."""
        return self.list_with_version(res, namespace, labels, page_size=page_size)[0]

    def list_with_version(self, res: Resource, namespace: str | None,
                          labels: dict[str, str] | None = None, *,
                          page_size: int = LIST_PAGE_SIZE, accept: str | None = None
                          ) -> tuple[builtins.list[dict[str, Any]], str]:
        """`list` and the list's resourceVersion (where a watch of the same objects
        starts); `accept` asks for another representation (PartialObjectMetadataList)."""
        query = [("limit", str(page_size))]
        if labels:
            query.append(("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items())))
        items: list[dict[str, Any]] = []
        token = version = ""
        while True:
            try:
                page = self._call("GET", res.path(namespace),
                                  query=query + ([("continue", token)] if token else []),
                                  accept=accept) or {}
            except KubeError as exc:
                if exc.status != 410 or not token:
                    raise
                items, token = [], ""  # the snapshot expired mid-way: start over
                continue
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            version = (page.get("metadata") or {}).get("resourceVersion") or ""
            if not token:
                break
        # Filter here too: the selector is a request, and the result must be right anyway.
        return [item for item in items
                if all((item.get("metadata", {}).get("labels") or {}).get(k) == v
                       for k, v in (labels or {}).items())], version

    def open_stream(self, path: str, query: builtins.list[tuple[str, str]], *,
                    read_timeout: float, accept: str | None = None) -> Any:
        """A GET whose body is read as it arrives (a watch): the urllib3 response, to be
        iterated with `.stream()` and released with `.release_conn()`."""
        try:
            method, url, headers, _ = self.api.param_serialize(
                "GET", path, query_params=query,
                header_params={"Accept": accept or "application/json"},
                auth_settings=["BearerToken"])[:4]
            response = self.api.call_api(method, url, header_params=headers,
                                         _request_timeout=(self.timeout, read_timeout))
        except ApiException as exc:
            raise KubeError(exc.status or 0, f"GET {path}: {exc.status} "
                            f"{_reason(exc)}") from None
        except Exception as exc:  # connection refused, timeouts, TLS errors
            raise KubeError(0, f"GET {path}: {exc}") from None
        if not 200 <= response.status <= 299:
            data = response.read()
            raise KubeError(response.status, f"GET {path}: {response.status} "
                            f"{_message(data)}")
        return response.response

    def create(self, res: Resource, namespace: str | None, body: dict[str, Any]) -> dict:
        self.on_write("create", res.kind)
        return self._call("POST", res.path(namespace), body=body,
                          query=[("fieldManager", FIELD_MANAGER)])

    def merge_patch(self, res: Resource, namespace: str | None, name: str, patch: dict,
                    *, subresource: str | None = None) -> dict[str, Any]:
        self.on_write("patch", res.kind)
        return self._call("PATCH", res.path(namespace, name, subresource), body=patch,
                          content_type="application/merge-patch+json",
                          query=[("fieldManager", FIELD_MANAGER)])

    def server_side_apply(self, res: Resource, namespace: str | None, name: str,
                          body: dict[str, Any], *, field_manager: str = FIELD_MANAGER,
                          force: bool = True, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply of `body` (the full configuration `field_manager` wants):
        fields it applied before and no longer lists are removed. `force` takes fields
        another manager set; `dry_run` computes the result without storing it (not a
        write)."""
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        else:
            self.on_write("apply", res.kind)
        # JSON is YAML: the body goes as JSON text under the apply content type.
        return self._call("PATCH", res.path(namespace, name), body=json.dumps(body),
                          content_type="application/apply-patch+yaml", query=query)

    def json_patch(self, res: Resource, namespace: str | None, name: str,
                   operations: JsonPatch) -> dict[str, Any]:
        self.on_write("patch", res.kind)
        return self._call("PATCH", res.path(namespace, name), body=operations,
                          content_type="application/json-patch+json",
                          query=[("fieldManager", FIELD_MANAGER)])

    def delete(self, res: Resource, namespace: str | None, name: str) -> None:
        self.on_write("delete", res.kind)
        try:
            self._call("DELETE", res.path(namespace, name))
        except KubeError as exc:
            if exc.status != 404:
                raise

    def api_available(self, group: str, version: str, *, ttl: float = 60.0) -> bool:
        """Whether the server serves `group/version` (discovery, cached for `ttl`)."""
        key = f"{group}/{version}"
        now = time.monotonic()
        cached = self._discovery.get(key)
        if cached and now - cached[0] < ttl:
            return cached[1]
        try:
            self._call("GET", f"/apis/{group}/{version}")
            found = True
        except KubeError as exc:
            if exc.status not in (404, 503):
                raise
            found = False
        self._discovery[key] = (now, found)
        return found


def _message(data: bytes | None) -> str:
    try:
        return json.loads(data or b"{}").get("message") or ""
    except (TypeError, ValueError, AttributeError):
        return (data or b"")[:200].decode("utf-8", "replace")


def _reason(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "").get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def api_client_from_environment(kubeconfig: str | None = None) -> k8s.ApiClient:
    """In a pod: the service account; elsewhere: the kubeconfig (KUBECONFIG or ~/.kube)."""
    from kubernetes import config

    configuration = k8s.Configuration()
    try:
        if kubeconfig:
            raise config.ConfigException("explicit kubeconfig")
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    # kopf runs handlers in up to 16 threads that share this client.
    configuration.connection_pool_maxsize = 32
    # client-go's TCP keepalive: the caches' watches are idle for long stretches, and a
    # connection a NAT or proxy dropped without a word would otherwise look quiet.
    configuration.keep_alive = True
    api = k8s.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api
