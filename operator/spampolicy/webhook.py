"""Admission: the same checks the operator runs, so `kubectl apply` of a bad SpamPolicy is
refused with the validator's messages instead of being accepted and left unserved."""

from __future__ import annotations

from typing import Any

from filter_server.policy.validate import validate_policy
from mailwarden_operator.spampolicy.spec import serving_errors, with_defaults

MAX_ERRORS = 20


def admission_errors(spec: dict[str, Any] | None, name: str) -> list[str]:
    """Every reason to refuse this SpamPolicy spec (empty: admit it)."""
    defaulted = with_defaults(spec)
    errors = [f"spec.policy.{e}" if e.path else f"spec.policy: {e.reason}"
              for e in validate_policy(defaulted.get("policy"))]
    model = (defaulted.get("policy") or {}).get("model") or {}
    if "file" in model:
        errors.append("spec.policy.model.file: on a cluster the model comes from "
                      "model.configMapRef (model.file is for local policy directories)")
    errors += [f"spec.{e}" if not e.startswith("metadata") else e
               for e in serving_errors(defaulted, name or "")]
    return errors


def admission_message(errors: list[str]) -> str:
    shown = errors[:MAX_ERRORS]
    more = len(errors) - len(shown)
    return "invalid SpamPolicy: " + "; ".join(shown) + (f"; and {more} more" if more else "")
