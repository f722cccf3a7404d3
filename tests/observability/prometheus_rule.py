"""Validation of a PrometheusRule against the Prometheus Operator's CRD schema.

The models of `cloudcoil.models.prometheus_operator` are generated from that CRD (types,
required fields, the duration patterns of `for`/`interval`, ...). They ignore unknown
fields, as the API server would by pruning them — silently losing a typo such as `fro:` —
so keys the model did not take are reported here as errors too.
"""

from __future__ import annotations

from typing import Any


def _unknown_keys(given: Any, kept: Any, path: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in kept:
                out.append(where)
            else:
                out.extend(_unknown_keys(value, kept[key], where))
    elif isinstance(given, list) and isinstance(kept, list):
        for index, (a, b) in enumerate(zip(given, kept)):
            out.extend(_unknown_keys(a, b, f"{path}[{index}]"))
    return out


def validate_prometheus_rule(obj: dict[str, Any]) -> None:
    """Raise ValueError when `obj` is not a valid monitoring.coreos.com/v1 PrometheusRule."""
    import pydantic
    from cloudcoil.models.prometheus_operator import v1

    if obj.get("apiVersion") != "monitoring.coreos.com/v1" or obj.get("kind") != "PrometheusRule":
        raise ValueError(f"not a PrometheusRule: {obj.get('apiVersion')} {obj.get('kind')}")
    try:
        model = v1.PrometheusRule.model_validate(obj)
    except pydantic.ValidationError as exc:
        raise ValueError(str(exc)) from None
    kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = _unknown_keys(obj, kept)
    if unknown:
        raise ValueError(f"unknown fields (the API server would drop them): {unknown}")
    names = [group["name"] for group in obj["spec"]["groups"]]
    if len(names) != len(set(names)):
        raise ValueError(f"rule group names must be unique: {names}")
    for group in obj["spec"]["groups"]:
        for rule in group["rules"]:
            if ("alert" in rule) == ("record" in rule):
                raise ValueError(f"a rule needs exactly one of alert and record: {rule}")
