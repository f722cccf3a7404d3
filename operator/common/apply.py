"""Create-or-merge-patch of desired state, writing nothing when nothing would change.

`desired ⊆ current` (every field we set already has our value; fields the API server
defaulted are ignored) means the object is as we want it: no request is sent. Otherwise
one JSON merge-patch sends the whole desired object. Renderers only emit optional content
inside lists (which a merge-patch replaces whole), so a field we stop setting never lingers.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.utils import parse_quantity

from mailwarden_operator.common.kube import Kube, KubeError, Resource

# Fields that are only ours to set at creation: afterwards the HPA owns the replica count.
CREATE_ONLY = {"Deployment": (("spec", "replicas"),)}


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have and type(want) is type(have):
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return False
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return want == have
    if isinstance(want, str) and isinstance(have, str):
        # The API server normalizes quantities ("1000m" -> "1").
        try:
            return parse_quantity(want) == parse_quantity(have)
        except ValueError:
            return False
    return False


def is_subset(want: Any, have: Any) -> bool:
    """Whether every field of `want` is present in `have` with an equal value."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            key in have and is_subset(value, have[key]) for key, value in want.items())
    if isinstance(want, list):
        return (isinstance(have, list) and len(want) == len(have)
                and all(is_subset(w, h) for w, h in zip(want, have)))
    return _same_scalar(want, have)


def _without(obj: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    for path in paths:
        node = out
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return out


def apply(kube: Kube, res: Resource, desired: dict[str, Any], *,
          create_only: tuple[tuple[str, ...], ...] | None = None,
          current: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Make the object match `desired`; returns ("created"|"patched"|"unchanged", object).

    `create_only` overrides CREATE_ONLY for this object (e.g. `()` when no autoscaler owns
    a Deployment's replica count); `current` skips the read when the caller has it."""
    meta = desired["metadata"]
    if current is None:
        current = kube.get(res, meta.get("namespace"), meta["name"])
    if current is None:
        return "created", kube.create(res, meta.get("namespace"), desired)
    paths = CREATE_ONLY.get(desired["kind"], ()) if create_only is None else create_only
    patch = _without(desired, paths)
    if is_subset(patch, current):
        return "unchanged", current
    return "patched", kube.merge_patch(res, meta.get("namespace"), meta["name"], patch)


def ensure_exists(kube: Kube, res: Resource, desired: dict[str, Any]) -> tuple[str, dict]:
    """For immutable objects named by their content: create when missing, else leave."""
    meta = desired["metadata"]
    current = kube.get(res, meta.get("namespace"), meta["name"])
    if current is not None:
        return "unchanged", current
    try:
        return "created", kube.create(res, meta.get("namespace"), desired)
    except KubeError as exc:
        if exc.status != 409:  # another reconcile created the same content first
            raise
        return "unchanged", kube.get(res, meta.get("namespace"), meta["name"]) or desired
