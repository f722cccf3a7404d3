"""Validate custom resources the way the API server would: apply the CRD's defaults, check
the OpenAPI schema (strictly: unknown fields are errors, like `kubectl apply
--validate=strict`), then evaluate every `x-kubernetes-validations` CEL rule (cel-python)."""

from __future__ import annotations

import copy
import sys
from typing import Any, Iterator

import celpy
import jsonschema

from mailwarden_operator.spec import _default


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


def _cel_nodes(schema: dict[str, Any], value: Any, path: str) -> Iterator[tuple[str, dict,
                                                                               Any]]:
    if "x-kubernetes-validations" in schema:
        yield path, schema, value
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                yield from _cel_nodes(sub, value[key], f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _cel_nodes(schema["items"], item, f"{path}[{i}]")


def _evaluate(rule: str, value: Any) -> Any:
    # cel-python raises the interpreter's recursion limit process-wide (to 2500) in
    # Environment(); put it back so other tests see the normal interpreter.
    limit = sys.getrecursionlimit()
    try:
        env = celpy.Environment()
        program = env.program(env.compile(rule))
        return program.evaluate({"self": celpy.json_to_cel(value)})
    finally:
        sys.setrecursionlimit(limit)


def validate_custom_resource(obj: dict[str, Any], crd: dict[str, Any]) -> list[str]:
    """Every error the API server would report for `obj` (empty: it would be accepted)."""
    version = next(v for v in crd["spec"]["versions"]
                   if f"{crd['spec']['group']}/{v['name']}" == obj.get("apiVersion"))
    schema = version["schema"]["openAPIV3Schema"]
    defaulted = _default(copy.deepcopy(obj), schema)
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in jsonschema.Draft7Validator(_strict(schema)).iter_errors(defaulted)]
    if errors:
        return errors
    for path, node, value in _cel_nodes(schema, defaulted, ""):
        for rule in node["x-kubernetes-validations"]:
            result = _evaluate(rule["rule"], value)
            if isinstance(result, Exception) or not bool(result):
                errors.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    return errors
