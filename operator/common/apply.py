"""Server-side apply of desired children, writing nothing when nothing would change.

Every child is written with server-side apply as field manager `mailwarden-operator` (the
whole desired object, `force`): the API server removes a field we applied before and no
longer list (a nodeSelector key, a toleration, an annotation), and leaves fields others own
alone (the HPA's replica count, annotations added by other controllers).

No request when nothing would change. The decision is the API server's own, remembered:
- after each apply we keep, per child, a digest of the configuration we applied and of the
  set of fields the server then recorded as ours (`managedFields`);
- the next reconcile sends nothing when the configuration digest is the same and the
  object's current set of our fields is still that set. Another client changing a field we
  own takes its ownership (an update moves it, a forced apply too), so the set differs and
  we apply again — that is drift correction;
- with nothing remembered (a restarted or newly active operator) one dry-run apply asks the
  server what the object would become; equal to what it is means unchanged (dry-run
  requests store nothing).
Comparing values ourselves does not work: the server does not echo `false`/empty fields it
omits and returns integer quantities as strings.

The replica count of an autoscaled Deployment is ours only at creation: it is handed to a
second field manager right away (the upstream recipe for handing `spec.replicas` to an HPA)
and left out of every later apply, so the HPA owns it and our applies never reset it.

A child with our name that we do not own (no controller reference to our resource) is not
adopted: `ForeignObject` is raised and the reconcile reports it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from mailwarden_operator.common.kube import FIELD_MANAGER, Kube, KubeError, Resource

# Fields that are only ours to set at creation: afterwards the HPA owns the replica count.
CREATE_ONLY = {"Deployment": (("spec", "replicas"),)}
# Holds `spec.replicas` from creation on, so our own manager never owns it.
INITIAL_REPLICAS_MANAGER = "mailwarden-operator-initial-replicas"
# Managers an operator before server-side apply wrote children as (the kubernetes client's
# default User-Agent): their fields are taken over once (see _adopt_legacy_fields).
LEGACY_MANAGERS = ("OpenAPI-Generator",)


class ForeignObject(KubeError):
    """An object with a child's name exists and is not ours: never adopted."""

    def __init__(self, kind: str, namespace: str | None, name: str, why: str) -> None:
        super().__init__(409, f"{kind} {namespace}/{name} already exists and is not managed "
                         f"by this resource ({why}); delete or rename it")
        self.kind = kind


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def our_fields(obj: dict[str, Any] | None, manager: str = FIELD_MANAGER) -> Any:
    """The fields `manager` owns by server-side apply (its `fieldsV1`), or None."""
    for entry in ((obj or {}).get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            return entry.get("fieldsV1")
    return None


def _without(obj: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    out = json.loads(json.dumps(obj))
    for path in paths:
        node = out
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return out


def _only(obj: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """apiVersion, kind, name and namespace of `obj` plus just `paths`."""
    meta = obj["metadata"]
    out: dict[str, Any] = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                           "metadata": {"name": meta["name"]}}
    if meta.get("namespace"):
        out["metadata"]["namespace"] = meta["namespace"]
    for path in paths:
        src: Any = obj
        for key in path:
            src = src.get(key) if isinstance(src, dict) else None
        if src is None:
            continue
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = src
    return out


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """What a dry-run result and the stored object must agree on: everything but the
    bookkeeping a no-op may still touch, and status (not ours)."""
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items()
                       if k not in ("managedFields", "resourceVersion")}
    return out


def check_ours(res: Resource, desired: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise ForeignObject unless `current` carries the controller reference `desired` does
    (children without an owner reference are not checked here)."""
    wanted = [r for r in desired["metadata"].get("ownerReferences") or [] if r.get("controller")]
    if not wanted:
        return
    meta = current.get("metadata") or {}
    have = [r for r in meta.get("ownerReferences") or [] if r.get("controller")]
    if not have:
        raise ForeignObject(res.kind, meta.get("namespace"), meta.get("name", ""),
                            "it has no controller")
    if have[0].get("uid") != wanted[0]["uid"]:
        raise ForeignObject(res.kind, meta.get("namespace"), meta.get("name", ""),
                            f"its controller is {have[0].get('kind')} {have[0].get('name')} "
                            f"uid {have[0].get('uid')}")


class Applier:
    """Server-side apply with the memory that makes a no-op reconcile write nothing."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._applied: dict[tuple[str, str | None, str], tuple[str, str]] = {}
        self._guard = threading.Lock()

    def apply(self, res: Resource, desired: dict[str, Any], *,
              create_only: tuple[tuple[str, ...], ...] | None = None,
              current: dict[str, Any] | None = None, read: bool = True,
              seen: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Make the object match `desired`; returns ("created"|"applied"|"unchanged",
        object). `create_only` overrides CREATE_ONLY (e.g. `()` when no autoscaler owns a
        Deployment's replica count); `current` skips the read when the caller has it
        (`read=False`: the caller knows it is absent). `seen`: a copy that may be stale
        (a watch event's): enough to tell "as we left it" without a read; anything else
        is decided from a fresh read (a stale copy must not cause a write)."""
        meta = desired["metadata"]
        namespace, name = meta.get("namespace"), meta["name"]
        key = (res.kind, namespace, name)
        paths = CREATE_ONLY.get(desired["kind"], ()) if create_only is None else create_only
        if current is None and seen is not None:
            with self._guard:
                remembered = self._applied.get(key)
            if remembered == (_digest(_without(desired, paths)), _digest(our_fields(seen))):
                return "unchanged", seen
        if current is None and read:
            current = self.kube.get(res, namespace, name)
        if current is None:
            return "created", self._create(res, desired, paths)
        check_ours(res, desired, current)
        config = _without(desired, paths)
        config_digest = _digest(config)
        if self._unchanged(res, key, config, config_digest, current):
            return "unchanged", current
        current = self._adopt_legacy_fields(res, current, paths)
        result = self.kube.server_side_apply(res, namespace, name, config)
        self._remember(key, config_digest, result)
        return "applied", result

    def forget(self, kind: str, namespace: str | None, name: str) -> None:
        with self._guard:
            self._applied.pop((kind, namespace, name), None)

    # -- the steps ---------------------------------------------------------------------------

    def _create(self, res: Resource, desired: dict[str, Any],
                paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
        meta = desired["metadata"]
        namespace, name = meta.get("namespace"), meta["name"]
        result = self.kube.server_side_apply(res, namespace, name, desired)
        config = desired
        if paths:
            # Hand the creation-only fields to their own manager, then release them from
            # ours: the HPA's later changes are never undone by our applies.
            self.kube.server_side_apply(res, namespace, name, _only(desired, paths),
                                        field_manager=INITIAL_REPLICAS_MANAGER)
            config = _without(desired, paths)
            result = self.kube.server_side_apply(res, namespace, name, config)
        self._remember((res.kind, namespace, name), _digest(config), result)
        return result

    def _remember(self, key: tuple[str, str | None, str], config_digest: str,
                  result: dict[str, Any]) -> None:
        with self._guard:
            self._applied[key] = (config_digest, _digest(our_fields(result)))

    def _unchanged(self, res: Resource, key: tuple[str, str | None, str],
                   config: dict[str, Any], config_digest: str,
                   current: dict[str, Any]) -> bool:
        with self._guard:
            remembered = self._applied.get(key)
        if remembered is not None:
            return remembered == (config_digest, _digest(our_fields(current)))
        if our_fields(current) is None:
            return False  # never applied by us (created before server-side apply)
        meta = config["metadata"]
        would_be = self.kube.server_side_apply(res, meta.get("namespace"), meta["name"], config,
                                               dry_run=True)
        same = (_comparable(would_be) == _comparable(current)
                and our_fields(would_be) == our_fields(current))
        if same:
            self._remember(key, config_digest, current)
        return same

    def _adopt_legacy_fields(self, res: Resource, current: dict[str, Any],
                             paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
        """Take over, once, the fields an operator before server-side apply wrote (as the
        client's default manager, by update): as ours, a field that version set and this
        one no longer does is removed by the apply that follows instead of lingering
        unowned. Creation-only fields go to their own manager, never to ours."""
        entries = (current.get("metadata") or {}).get("managedFields") or []
        def legacy(entry: dict[str, Any]) -> bool:
            return (entry.get("manager") in LEGACY_MANAGERS and entry.get("operation") ==
                    "Update" and not entry.get("subresource"))
        if not any(legacy(e) for e in entries):
            return current
        converted = []
        for entry in entries:
            if legacy(entry):
                fields = json.loads(json.dumps(entry.get("fieldsV1") or {}))
                for path in paths:
                    node = fields
                    for part in path[:-1]:
                        node = node.get(f"f:{part}", {})
                    node.pop(f"f:{path[-1]}", None)
                entry = {**entry, "manager": FIELD_MANAGER, "operation": "Apply",
                         "fieldsV1": fields}
                entry.pop("subresource", None)
            converted.append(entry)
        meta = current["metadata"]
        return self.kube.json_patch(res, meta.get("namespace"), meta["name"], [
            {"op": "test", "path": "/metadata/resourceVersion",
             "value": meta.get("resourceVersion")},
            {"op": "replace", "path": "/metadata/managedFields", "value": converted}])


def ensure_exists(kube: Kube, res: Resource, desired: dict[str, Any]) -> tuple[str, dict]:
    """For immutable objects named by their content: create when missing, else leave (a
    foreign object with the name is refused, as by Applier.apply)."""
    meta = desired["metadata"]
    # Metadata is all this needs (existence and owner), so a metadata-only cache serves it.
    current = kube.get_metadata(res, meta.get("namespace"), meta["name"])
    if current is not None:
        check_ours(res, desired, current)
        return "unchanged", current
    try:
        return "created", kube.create(res, meta.get("namespace"), desired)
    except KubeError as exc:
        if exc.status != 409:  # another reconcile created the same content first
            raise
        return "unchanged", kube.get(res, meta.get("namespace"), meta["name"]) or desired
