"""Filling in a spec's defaults from its CRD schema, as the API server does, so both kinds
have one source for their defaults: the schema itself."""

from __future__ import annotations

import copy
from typing import Any


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
