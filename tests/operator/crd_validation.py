"""Validate custom resources the way the API server would: apply the CRD's defaults, check
the OpenAPI schema (strictly: unknown fields are errors, like `kubectl apply
--validate=strict`), then evaluate every `x-kubernetes-validations` CEL rule (cel-python);
transition rules (those using `oldSelf`) only for updates."""

from __future__ import annotations

import copy
import sys
from typing import Any, Iterator

import celpy
import jsonschema

from mailwarden_operator.common.spec import apply_schema_defaults


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()
               if not k.startswith("x-kubernetes-") and k != "format"}
        if schema.get("type") == "object" and "properties" in schema and \
                not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


_ABSENT = object()  # no old value: a create, or a field the old object lacked


def _cel_nodes(schema: dict[str, Any], value: Any, path: str,
               old: Any = _ABSENT) -> Iterator[tuple[str, dict, Any, Any]]:
    if "x-kubernetes-validations" in schema:
        yield path, schema, value, old
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                old_value = old[key] if isinstance(old, dict) and key in old else _ABSENT
                yield from _cel_nodes(sub, value[key], f"{path}.{key}", old_value)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _cel_nodes(schema["items"], item, f"{path}[{i}]")


def _evaluate(rule: str, value: Any, old: Any = _ABSENT) -> Any:
    # cel-python raises the interpreter's recursion limit process-wide (to 2500) in
    # Environment(); put it back so other tests see the normal interpreter.
    limit = sys.getrecursionlimit()
    try:
        env = celpy.Environment()
        program = env.program(env.compile(rule))
        activation = {"self": celpy.json_to_cel(value)}
        if old is not _ABSENT:
            activation["oldSelf"] = celpy.json_to_cel(old)
        return program.evaluate(activation)
    finally:
        sys.setrecursionlimit(limit)


def validate_custom_resource(obj: dict[str, Any], crd: dict[str, Any],
                             old: dict[str, Any] | None = None) -> list[str]:
    """Every error the API server would report for `obj` (empty: it would be accepted);
    with `old`, as an update of `old` (transition rules, those using `oldSelf`, apply only
    then, and only where the old object had the field — as the API server does)."""
    version = next(v for v in crd["spec"]["versions"]
                   if f"{crd['spec']['group']}/{v['name']}" == obj.get("apiVersion"))
    schema = version["schema"]["openAPIV3Schema"]
    defaulted = apply_schema_defaults(copy.deepcopy(obj), schema)
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in jsonschema.Draft7Validator(_strict(schema)).iter_errors(defaulted)]
    if errors:
        return errors
    previous = apply_schema_defaults(copy.deepcopy(old), schema) if old is not None else _ABSENT
    for path, node, value, old_value in _cel_nodes(schema, defaulted, "", previous):
        for rule in node["x-kubernetes-validations"]:
            transition = "oldSelf" in rule["rule"]
            if transition and old_value is _ABSENT:
                continue
            result = _evaluate(rule["rule"], value, old_value if transition else _ABSENT)
            if isinstance(result, Exception) or not bool(result):
                errors.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    return errors
