"""The immutable, content-hashed policy ConfigMap (`<name>-policy-<hash>`)."""

from __future__ import annotations

import base64
from typing import Any

from filter_server.policy.loader import POLICY_FILE
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.policy import PolicyBundle


def render_configmap(owner: dict[str, Any], bundle: PolicyBundle) -> dict[str, Any]:
    """A change of policy or model is a new object (new name), so pods of the previous
    rollout keep reading theirs; `immutable` lets the kubelet stop watching it."""
    name = naming.configmap_name(owner["metadata"]["name"], bundle.hash)
    out: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": naming.child_metadata(
            owner, name,
            extra_labels={naming.ROLE_LABEL: "policy", naming.HASH_LABEL: bundle.hash},
            annotations={naming.HASH_ANNOTATION: bundle.hash}),
        "immutable": True,
        "data": {POLICY_FILE: bundle.policy_yaml()},
    }
    if bundle.model_file is not None:
        out["binaryData"] = {
            bundle.model_file: base64.b64encode(bundle.model_bytes or b"").decode("ascii")}
    return out
