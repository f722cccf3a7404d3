"""The PersistentVolumeClaim of an embedded (SQLite) store on persistent storage.

Created once and never patched (a claim's spec is immutable apart from growing it, which
is done on the claim itself). Not owned: deleting the store keeps its suppressions.
"""

from __future__ import annotations

from typing import Any

from mailwarden_operator.unsubscribestore import naming


def wants_claim(owner: dict[str, Any]) -> bool:
    storage = owner["spec"]["storage"]
    return storage["type"] == "embedded" and \
        storage["embedded"]["volume"] == "persistentVolumeClaim"


def render_data_claim(owner: dict[str, Any]) -> dict[str, Any]:
    embedded = owner["spec"]["storage"]["embedded"]
    spec: dict[str, Any] = {
        # One pod writes the SQLite file (the Deployment uses the Recreate strategy).
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": embedded["size"]}},
    }
    if embedded.get("storageClassName"):
        spec["storageClassName"] = embedded["storageClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": naming.child_metadata(
            owner, naming.data_claim_name(owner["metadata"]["name"]), owned=False,
            extra_labels={naming.ROLE_LABEL: "data"}),
        "spec": spec,
    }
