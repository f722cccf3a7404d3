"""spec.learning: the filter pods' gRPC `Learning.Learn` (filter_server/server/learning.py).

Learn stores messages people labelled in a folder for the next `mailwarden train`; every
filter pod of the policy must write to the same folder, so it is a PersistentVolumeClaim
the user provides (ReadWriteMany when the pods may land on several nodes). Learn also needs
an admin credential: the operator generates one once into a Secret owned by the policy
(`<name>-learn-token`, key `token`) unless `adminTokenSecretName` names the user's own.

The token never leaves the Secret: the pods read it from a mounted file
(`--admin-token-file`), and only the Secret's resourceVersion goes into the pod template,
so replacing the token rolls the pods (the server reads it once at start).
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from typing import Any

from mailwarden_operator.common.apply import ensure_exists
from mailwarden_operator.common.kube import PVCS, SECRETS, Kube
from mailwarden_operator.common.naming import GROUP, MANAGED_BY
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.policy import PolicyRejected

log = logging.getLogger("mailwarden.operator")

TOKEN_KEY = "token"
TOKEN_BYTES = 32
LEARN_MOUNT = "/var/lib/mailwarden/learn"
TOKEN_MOUNT = "/etc/mailwarden/learn-token"
TOKEN_VERSION_ANNOTATION = f"{GROUP}/learn-token-version"
GENERATED_ANNOTATION = f"{GROUP}/generated-by"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Learning from users (docs/model.md, \"Learning from users\"): the "
    "filter pods serve gRPC `Learning.Learn` (and `mailwarden learn`), which stores messages "
    "people labelled ham or spam in a shared folder for the next `mailwarden train`. The "
    "served model never changes in place. Learn callers present the admin token as "
    "`authorization: Bearer <token>`.",
    "properties": {
        "enabled": {"type": "boolean", "default": False,
                    "description": "Serve Learn (`--learn-dir`, `--admin-token-file`)."},
        "claimName": {
            "type": "string", "maxLength": 253,
            "description": "PersistentVolumeClaim (same namespace, created by you) the "
            "labelled messages are stored in, mounted read-write into every filter pod at "
            f"{LEARN_MOUNT}: ReadWriteMany when the pods may run on several nodes. "
            "Required when enabled; the policy is not rolled out while it is missing."},
        "subPath": {
            "type": "string", "maxLength": 1024,
            "description": "Folder inside the claim (relative, no `..`), so several "
            "policies can share one claim. Default: the claim's root."},
        "adminTokenSecretName": {
            "type": "string", "maxLength": 253,
            "description": "An existing Secret (same namespace) whose key `token` is the "
            "admin credential. Default: the operator creates `<name>-learn-token` once with "
            "32 random bytes (base64url), owned by this SpamPolicy and never overwritten; "
            "read it with `kubectl get secret <name>-learn-token -o "
            "jsonpath='{.data.token}' | base64 -d`. Changing the token rolls the pods."},
        "maxPerHour": {"type": "integer", "minimum": 1, "maximum": 1000000,
                       "description": "New messages of each class stored per hour, across "
                       "all pods (`--learn-max-per-hour`). Default: the server's (500)."},
        "maxMessages": {"type": "integer", "minimum": 1, "maximum": 10000000,
                        "description": "Messages of each class the folder may hold until "
                        "it is trained on and emptied (`--learn-max-messages`). Default: "
                        "the server's (25,000)."},
    },
    "x-kubernetes-validations": [
        {"rule": "!self.enabled || has(self.claimName)",
         "message": "learning.enabled needs learning.claimName (the shared folder)"},
        {"rule": "!has(self.subPath) || (!self.subPath.startsWith('/') && "
         "!self.subPath.matches('(^|/)[.][.](/|$)'))",
         "message": "learning.subPath is relative to the claim: no leading / and no .."}],
}


def enabled(spec: dict[str, Any]) -> bool:
    return bool((spec.get("learning") or {}).get("enabled"))


def spec_errors(spec: dict[str, Any]) -> list[str]:
    """The CEL rules of spec.learning, repeated (a server that skipped them)."""
    learning = spec.get("learning") or {}
    errors = []
    if learning.get("enabled") and not learning.get("claimName"):
        errors.append("learning.enabled needs learning.claimName (the shared folder)")
    sub_path = str(learning.get("subPath", ""))
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        errors.append("learning.subPath is relative to the claim: no leading / and no ..")
    return errors


def token_secret_name(owner: dict[str, Any]) -> str:
    learning = owner["spec"].get("learning") or {}
    return learning.get("adminTokenSecretName") or f"{owner['metadata']['name']}-learn-token"


def render_token_secret(owner: dict[str, Any], token: str) -> dict[str, Any]:
    """The generated admin-token Secret: owned (it goes with the policy; nothing outside
    the cluster depends on it as links in inboxes depend on a store's signing key)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": naming.child_metadata(
            owner, token_secret_name(owner),
            extra_labels={naming.ROLE_LABEL: "learn-token"},
            annotations={GENERATED_ANNOTATION: MANAGED_BY}),
        "data": {TOKEN_KEY: base64.b64encode(token.encode("ascii")).decode("ascii")},
    }


def _has_token(secret: dict[str, Any]) -> bool:
    raw = (secret.get("data") or {}).get(TOKEN_KEY)
    if raw is None:
        return False
    try:
        return bool(base64.b64decode(raw, validate=True).strip())
    except (binascii.Error, ValueError):
        return False


def prepare(kube: Kube, owner: dict[str, Any]) -> str | None:
    """Check the claim and the token Secret (creating the generated one when absent);
    returns the Secret's resourceVersion for the pod template, None when learning is off.
    Raises PolicyRejected: a missing claim or token would leave new pods Pending or
    crash-looping, so nothing rolls out until it is fixed. No message holds the token."""
    spec = owner["spec"]
    if not enabled(spec):
        return None
    namespace = owner["metadata"]["namespace"]
    claim = spec["learning"]["claimName"]
    if kube.get(PVCS, namespace, claim) is None:
        raise PolicyRejected("LearningClaimNotFound", [
            f"learning.claimName: PersistentVolumeClaim {claim} not found (create it; "
            "ReadWriteMany when the filter pods may run on several nodes)"])
    name = token_secret_name(owner)
    secret = kube.get(SECRETS, namespace, name)
    if secret is None and not spec["learning"].get("adminTokenSecretName"):
        outcome, secret = ensure_exists(
            kube, SECRETS, render_token_secret(owner, secrets.token_urlsafe(TOKEN_BYTES)))
        if outcome == "created":
            log.info("generated the Learn admin-token Secret %s/%s", namespace, name)
    if secret is None:
        raise PolicyRejected("LearningTokenNotFound", [
            f"learning.adminTokenSecretName: Secret {name} not found"])
    if not _has_token(secret):
        raise PolicyRejected("LearningTokenInvalid", [
            f"Secret {name} has no non-empty (base64) key '{TOKEN_KEY}'"])
    return str(secret["metadata"].get("resourceVersion", ""))


def add_to_pod(template: dict[str, Any], owner: dict[str, Any], token_version: str) -> None:
    """Mount the learning folder and the token into a filter pod template and turn Learn
    on. The folder is the only writable place besides /tmp (read-only root file system);
    fsGroup gives the non-root user write access on volumes that support it."""
    learning = owner["spec"]["learning"]
    template["metadata"]["annotations"][TOKEN_VERSION_ANNOTATION] = token_version
    pod = template["spec"]
    container = pod["containers"][0]
    container["args"] += ["--learn-dir", LEARN_MOUNT,
                          "--admin-token-file", f"{TOKEN_MOUNT}/{TOKEN_KEY}"]
    for key, flag in (("maxPerHour", "--learn-max-per-hour"),
                      ("maxMessages", "--learn-max-messages")):
        if key in learning:
            container["args"] += [flag, str(learning[key])]
    folder: dict[str, Any] = {"name": "learn", "mountPath": LEARN_MOUNT}
    if learning.get("subPath"):
        folder["subPath"] = learning["subPath"]
    container["volumeMounts"] += [
        folder, {"name": "learn-token", "mountPath": TOKEN_MOUNT, "readOnly": True}]
    pod["volumes"] += [
        {"name": "learn", "persistentVolumeClaim": {"claimName": learning["claimName"]}},
        {"name": "learn-token", "secret": {
            "secretName": token_secret_name(owner), "defaultMode": 0o440,
            "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}]}}]
