"""Names, labels and fixed ports shared by the renderers, the reconciler and the chart."""

from __future__ import annotations

GROUP = "mailwarden.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SpamPolicy"
PLURAL = "spampolicies"

MANAGED_BY = "mailwarden-operator"
HASH_ANNOTATION = f"{GROUP}/policy-hash"
POLICY_LABEL = f"{GROUP}/spampolicy"
ROLE_LABEL = f"{GROUP}/role"
HASH_LABEL = f"{GROUP}/policy-hash"
SERVICE_ROLE_LABEL = f"{GROUP}/service"

GRPC_PORT = 9090
METRICS_PORT = 9091
POLICY_MOUNT = "/etc/mailwarden/policy"
TLS_MOUNT = "/etc/mailwarden/tls"
CONTAINER_NAME = "filter"

# Longest SpamPolicy name whose children still fit the 63-character DNS label limit:
# "<name>-filter-headless" is the longest child name.
HEADLESS_SUFFIX = "-filter-headless"
MAX_NAME_LENGTH = 63 - len(HEADLESS_SUFFIX)


def workload_name(policy_name: str) -> str:
    """Deployment, ClusterIP Service, HPA, PDB and ServiceMonitor share this name."""
    return f"{policy_name}-filter"


def headless_name(policy_name: str) -> str:
    return f"{policy_name}{HEADLESS_SUFFIX}"


def configmap_name(policy_name: str, policy_hash: str) -> str:
    return f"{policy_name}-policy-{policy_hash}"


def selector_labels(policy_name: str) -> dict[str, str]:
    """The pod selector: stable for the life of the Deployment (selectors are immutable)."""
    return {
        "app.kubernetes.io/name": "mailwarden-filter",
        "app.kubernetes.io/instance": policy_name,
    }


def common_labels(policy_name: str) -> dict[str, str]:
    return {
        **selector_labels(policy_name),
        "app.kubernetes.io/component": "filter",
        "app.kubernetes.io/part-of": "mailwarden",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        POLICY_LABEL: policy_name,
    }


def owner_reference(owner: dict, kind: str = KIND) -> dict:
    """A controller owner reference to a SpamPolicy (or UnsubscribeStore, `kind`): deleting
    the owner cascades to the child."""
    meta = owner["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata_for(owner: dict, name: str, labels: dict[str, str], *, kind: str,
                 owned: bool = True, annotations: dict[str, str] | None = None) -> dict:
    """Child metadata for either kind of owner; `owned=False` leaves out the owner
    reference (for what must outlive its owner)."""
    out: dict = {"name": name, "namespace": owner["metadata"]["namespace"], "labels": labels}
    if owned:
        out["ownerReferences"] = [owner_reference(owner, kind)]
    if annotations:
        out["annotations"] = annotations
    return out


def child_metadata(owner: dict, name: str, *, extra_labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None) -> dict:
    return metadata_for(owner, name,
                        {**common_labels(owner["metadata"]["name"]), **(extra_labels or {})},
                        kind=KIND, annotations=annotations)
