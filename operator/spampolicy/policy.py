"""From `spec.policy` to the bundle a filter pod loads: validated, defaulted, model resolved.

The model named by `model.configMapRef` is copied into the bundle and the policy is rewritten
to name it by `model.file` — the layout `mailwarden serve --policy-dir` reads. The content
hash comes from the filter server's own `policy_hash`, on exactly what the server will
load, so the hash in status equals the one pods report.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from filter_server.policy.loader import POLICY_FILE, policy_hash
from filter_server.policy.validate import apply_defaults, validate_policy

# A ConfigMap (like every object) must stay under 1 MiB; keep room for metadata.
MAX_BUNDLE_BYTES = 1_000_000
MAX_MESSAGE_ERRORS = 10


class PolicyRejected(Exception):
    """The policy cannot be rolled out; `reason` is a condition reason (CamelCase)."""

    def __init__(self, reason: str, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.reason = reason
        self.errors = errors

    def summary(self) -> str:
        shown = self.errors[:MAX_MESSAGE_ERRORS]
        more = len(self.errors) - len(shown)
        return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class PolicyBundle:
    policy: dict[str, Any]          # defaulted, in local form (model.file)
    model_file: str | None
    model_bytes: bytes | None
    hash: str

    def policy_yaml(self) -> str:
        # PyYAML reads back exactly what it wrote (JSON text would not do: PyYAML takes
        # `1e-05` for a string), so the server computes the same hash from this file.
        return yaml.safe_dump(self.policy, sort_keys=True, allow_unicode=True)

    def rule_count(self) -> int:
        return len(self.policy["rules"]) + len(self.policy["metaRules"])


@functools.lru_cache(maxsize=512)
def _errors_of(policy_json: str) -> tuple[str, ...]:
    # Validation compiles every pattern (≈0.1-0.2 s for a typical policy); a resync
    # re-checks unchanged policies, so remember the verdict per exact content.
    return tuple(str(e) for e in validate_policy(json.loads(policy_json)))


def policy_errors(policy: Any) -> list[str]:
    """The validator's messages for `policy` (cached by content)."""
    try:
        key = json.dumps(policy, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return [str(e) for e in validate_policy(policy)]
    return list(_errors_of(key))


# (configmap name, key) -> the ConfigMap object, or None when it does not exist
ConfigMapReader = Callable[[str], "dict[str, Any] | None"]


def model_from_configmap(configmap: dict[str, Any] | None, name: str, key: str) -> bytes:
    if configmap is None:
        raise PolicyRejected("ModelNotFound", [f"model.configMapRef: ConfigMap {name!r} "
                                               "not found"])
    binary = configmap.get("binaryData") or {}
    data = configmap.get("data") or {}
    if key in binary:
        try:
            return base64.b64decode(binary[key], validate=True)
        except ValueError:
            raise PolicyRejected("ModelNotFound", [
                f"model.configMapRef: binaryData[{key!r}] of ConfigMap {name!r} is not "
                "base64"]) from None
    if key in data:
        return data[key].encode("utf-8")
    raise PolicyRejected("ModelNotFound", [f"model.configMapRef: ConfigMap {name!r} has no "
                                           f"key {key!r} in data or binaryData"])


def build_bundle(policy: Any, read_configmap: ConfigMapReader) -> PolicyBundle:
    """Validate `spec.policy`, resolve its model, and hash it; raises PolicyRejected."""
    errors = policy_errors(policy)
    if errors:
        raise PolicyRejected("InvalidPolicy", errors)
    local = apply_defaults(policy)
    model_file = None
    model_bytes = None
    model = local.get("model")
    if model is not None and "configMapRef" in model:
        ref = model["configMapRef"]
        if ref["key"] == POLICY_FILE:
            raise PolicyRejected("InvalidPolicy", [
                f"model.configMapRef.key: must not be {POLICY_FILE!r} (that name holds "
                "the policy)"])
        model_bytes = model_from_configmap(read_configmap(ref["name"]), ref["name"],
                                           ref["key"])
        model_file = ref["key"]
        local["model"] = {k: v for k, v in model.items() if k != "configMapRef"}
        local["model"]["file"] = model_file
    elif model is not None and "file" in model:
        # A file only exists in a local policy directory; a cluster has nowhere to read it.
        raise PolicyRejected("InvalidPolicy", [
            "model.file: on a cluster the model comes from model.configMapRef (model.file "
            "is for local policy directories)"])
    local = apply_defaults(local)
    # The local form must pass the very check the server runs before swapping it in
    # (a ConfigMap key can be a name model.file does not accept, for example).
    errors = policy_errors(local)
    if errors:
        raise PolicyRejected("InvalidPolicy", errors)
    bundle = PolicyBundle(local, model_file, model_bytes, policy_hash(local, model_bytes))
    size = len(bundle.policy_yaml().encode()) + len(model_bytes or b"")
    if size > MAX_BUNDLE_BYTES:
        raise PolicyRejected("PolicyTooLarge", [
            f"policy and model take {size} bytes; a ConfigMap holds at most "
            f"{MAX_BUNDLE_BYTES}"])
    return bundle
