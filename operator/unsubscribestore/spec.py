"""Defaults and cross-field checks of an UnsubscribeStore spec.

Same approach as the SpamPolicy's: the defaults come from the CRD schema (one source), and the
CEL rules are repeated here so the operator refuses an impossible store even when the API
server did not check them.
"""

from __future__ import annotations

import copy
from typing import Any

from mailwarden_operator.common.spec import (
    apply_schema_defaults,
    cpu_request_errors,
    name_errors,
    positive_count_errors,
)
from mailwarden_operator.unsubscribestore import crd, naming


def with_defaults(spec: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `spec` with every CRD default filled in, as the API server would; an
    embedded store without a `storage.embedded` block gets that block's defaults."""
    out = copy.deepcopy(spec or {})
    storage = out.get("storage")
    if isinstance(storage, dict) and storage.get("type") == "embedded":
        storage.setdefault("embedded", {})
    return apply_schema_defaults(out, crd.SPEC_SCHEMA)


def spec_errors(spec: dict[str, Any], name: str) -> list[str]:
    """Cross-field problems (the CEL rules, repeated in Python) of a defaulted spec."""
    errors = []
    storage = spec.get("storage") or {}
    kind = storage.get("type")
    if kind not in ("postgres", "embedded"):
        errors.append("storage.type must be postgres or embedded")
    if kind == "postgres" and not (storage.get("postgres") or {}).get("dsnSecretRef"):
        errors.append("storage.type postgres needs storage.postgres.dsnSecretRef")
    if kind != "postgres" and "postgres" in storage:
        errors.append("storage.postgres is only for storage.type postgres")
    if kind != "embedded" and "embedded" in storage:
        errors.append("storage.embedded is only for storage.type embedded")
    replicas = spec["replicas"]
    if replicas["min"] > replicas["max"]:
        errors.append(f"replicas.min ({replicas['min']}) must not exceed replicas.max "
                      f"({replicas['max']})")
    if kind == "embedded":
        if spec["durability"] == "replicated":
            errors.append("durability replicated needs PostgreSQL with a synchronous "
                          "standby; embedded SQLite cannot replicate")
        if (replicas["min"], replicas["max"]) != (1, 1):
            errors.append("embedded storage runs exactly one replica: set replicas.min and "
                          "replicas.max to 1")
    age = spec["oneClick"]["tokenMaxAgeDays"]
    if age and age < crd.MIN_TOKEN_MAX_AGE_DAYS:
        errors.append("oneClick.tokenMaxAgeDays must be 0 (never expire) or at least "
                      f"{crd.MIN_TOKEN_MAX_AGE_DAYS} (CASL)")
    tls = spec.get("tls") or {}
    if tls.get("adminClients") and not tls.get("requireClientCert"):
        errors.append("tls.adminClients names client certificates: it needs "
                      "tls.requireClientCert")
    errors += positive_count_errors("disruption.maxUnavailable",
                                    spec["disruption"]["maxUnavailable"])
    if kind != "embedded":
        errors += cpu_request_errors(spec.get("resources"))
    errors += name_errors(naming.KIND, name, naming.MAX_NAME_LENGTH)
    return errors


def is_embedded(spec: dict[str, Any]) -> bool:
    return spec["storage"]["type"] == "embedded"
