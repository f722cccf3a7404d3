"""Filling in a spec's defaults from its CRD schema, as the API server does, so both kinds
have one source for their defaults: the schema itself."""

from __future__ import annotations

import copy
import re
from typing import Any

from mailwarden_operator.common.crd import DNS_1035_LABEL


def apply_schema_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """`value` with every `default` of `schema` filled in where the field is absent
    (recursively, into objects and array items). Mutates and returns `value`."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_schema_defaults(value[key], sub)
    elif isinstance(value, list) and "items" in schema:
        return [apply_schema_defaults(item, schema["items"]) for item in value]
    return value


def name_errors(kind: str, name: str, max_length: int) -> list[str]:
    """The CRD's rules for a resource name (repeated for a server that skipped them): its
    Services are named after it, so it must be a DNS-1035 label short enough for the
    longest child name."""
    errors = []
    if len(name) > max_length:
        errors.append(f"metadata.name: at most {max_length} characters")
    if not re.match(DNS_1035_LABEL, name):
        errors.append(f"metadata.name: {kind} names must be DNS-1035 labels (lower-case "
                      "letters, digits and '-', starting with a letter and ending with a "
                      "letter or digit): the operator names Services after them")
    return errors


def cpu_request_errors(resources: dict[str, Any] | None) -> list[str]:
    """The CRD's rule: user resources must request (or limit) cpu, since the autoscaler's
    CPU target is a percentage of the request (none: the operator's defaults, which do)."""
    if not resources:
        return []
    if "cpu" in (resources.get("requests") or {}) or "cpu" in (resources.get("limits") or {}):
        return []
    return ["resources must request cpu (requests.cpu, or limits.cpu, which the request "
            "defaults to): the autoscaler's CPU target is a percentage of the request, and "
            "without one it stops scaling"]


def positive_count_errors(field: str, value: Any) -> list[str]:
    """The CRD's rule for a pod count such as rollout.maxSurge: at least 1 or 1%-100%."""
    if isinstance(value, bool):
        ok = False
    elif isinstance(value, int):
        ok = value >= 1
    else:
        ok = isinstance(value, str) and re.fullmatch(r"(100|[1-9][0-9]?)%", value) is not None
    return [] if ok else [f"{field} must be at least 1 or a percentage from 1% to 100%"]
