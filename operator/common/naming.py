"""The API group, the labels every child carries, and owner references — for either kind."""

from __future__ import annotations

from typing import Any

GROUP = "mailwarden.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

MANAGED_BY = "mailwarden-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
ROLE_LABEL = f"{GROUP}/role"
SERVICE_ROLE_LABEL = f"{GROUP}/service"


def owner_reference(owner: dict[str, Any], kind: str) -> dict[str, Any]:
    """A controller owner reference to `owner`, a custom resource of `kind`: deleting the
    owner cascades to the child."""
    meta = owner["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata_for(owner: dict[str, Any], name: str, labels: dict[str, str], *, kind: str,
                 owned: bool = True,
                 annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """Child metadata for an owner of `kind`; `owned=False` leaves out the owner reference
    (for what must outlive its owner)."""
    out: dict[str, Any] = {"name": name, "namespace": owner["metadata"]["namespace"],
                           "labels": labels}
    if owned:
        out["ownerReferences"] = [owner_reference(owner, kind)]
    if annotations:
        out["annotations"] = annotations
    return out
