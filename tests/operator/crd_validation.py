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
    except celpy.CELEvalError as exc:
        # A rule that cannot be evaluated (e.g. a missing field: "no such key") fails, as
        # on the API server.
        return exc
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


def _schema_nodes(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _schema_nodes(sub, f"{path}.properties[{key}]")
    if isinstance(schema.get("items"), dict):
        yield from _schema_nodes(schema["items"], f"{path}.items")
    # Defaults are forbidden under additionalProperties (the API server does not follow it).


def _pruned(value: Any, schema: dict[str, Any]) -> Any:
    """`value` without the fields `schema` does not declare (the API server's pruning)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        if "properties" in schema:
            return {k: _pruned(v, schema["properties"][k]) for k, v in value.items()
                    if k in schema["properties"]}
        if isinstance(schema.get("additionalProperties"), dict):
            return {k: _pruned(v, schema["additionalProperties"]) for k, v in value.items()}
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_pruned(v, schema["items"]) for v in value]
    return value


def default_errors(crd: dict[str, Any]) -> list[str]:
    """Every `default` the API server would refuse when the CRD is created.

    As the API server does (apiextensions-apiserver schema/defaulting/validation.go), each
    default is checked *as written*: nested defaults are not applied first. It must be
    pruned (no undeclared fields), pass the OpenAPI schema of its node (types, ranges,
    `required`, patterns) and every CEL rule of its node and of the fields it contains —
    transition rules with `oldSelf` being the default itself."""
    errors = []
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        for path, node in _schema_nodes(root, "openAPIV3Schema"):
            if "default" not in node:
                continue
            default = node["default"]
            where = f"{version['name']}: {path}.default"
            if _pruned(copy.deepcopy(default), node) != default:
                errors.append(f"{where}: must not have unknown fields")
            errors += [f"{where}: {e.message}"
                       for e in jsonschema.Draft7Validator(_strict(node)).iter_errors(default)]
            for cel_path, cel_node, value, _ in _cel_nodes(node, default, ""):
                for rule in cel_node["x-kubernetes-validations"]:
                    old = value if "oldSelf" in rule["rule"] else _ABSENT
                    result = _evaluate(rule["rule"], value, old)
                    if isinstance(result, Exception) or not bool(result):
                        errors.append(f"{where}{cel_path}: {rule.get('message', rule['rule'])}")
    return errors


def metadata_schema_errors(crd: dict[str, Any]) -> list[str]:
    """The structural-schema rule for the root `metadata` node (apiextensions-apiserver
    schema/validation.go): nothing but `type: object`, and at most restrictions of the
    `name` and `generateName` properties — not even a description."""
    errors = []
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        metadata = (root.get("properties") or {}).get("metadata")
        if metadata is None:
            continue
        if metadata.get("type") != "object":
            errors.append(f"{version['name']}: metadata: type must be object")
        extra = set(metadata) - {"type", "properties"}
        extra_properties = set(metadata.get("properties") or {}) - {"name", "generateName"}
        if extra or extra_properties:
            errors.append(f"{version['name']}: metadata: must not specify anything other "
                          f"than name and generateName (found {sorted(extra | extra_properties)})")
    return errors
