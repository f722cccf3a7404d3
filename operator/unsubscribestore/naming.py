"""Names, labels, mount paths and ports of an UnsubscribeStore's children.

The ports and flags are the contract with `mailwarden unsubscribe-server` (see
docs/unsubscribe.md); the Service names are what SpamPolicies resolve the store by.
"""

from __future__ import annotations

from typing import Any

from mailwarden import wire
from mailwarden_operator.common import naming as common

KIND = "UnsubscribeStore"
PLURAL = "unsubscribestores"
SINGULAR = "unsubscribestore"

STORE_LABEL = f"{common.GROUP}/unsubscribestore"
ROLE_LABEL = common.ROLE_LABEL
SERVICE_ROLE_LABEL = common.SERVICE_ROLE_LABEL
# On the pod template: a change of either is a rolling update.
CONFIG_HASH_ANNOTATION = f"{common.GROUP}/config-hash"
SECRET_VERSIONS_ANNOTATION = f"{common.GROUP}/secret-versions"
GENERATED_ANNOTATION = f"{common.GROUP}/generated-by"

# Labels every filter pod carries (SpamPolicy pods, see spampolicy/naming.selector_labels):
# the store's NetworkPolicy admits them to the gRPC port.
FILTER_POD_LABELS = {"app.kubernetes.io/name": "mailwarden-filter",
                     "app.kubernetes.io/part-of": "mailwarden"}

GRPC_PORT = wire.STORE_GRPC_PORT
HTTP_PORT = wire.STORE_HTTP_PORT
METRICS_PORT = wire.STORE_METRICS_PORT
CONTAINER_NAME = "unsubscribe"
MIGRATE_CONTAINER_NAME = "migrate"

SIGNING_KEY_MOUNT = "/etc/mailwarden/signing-key"
# The suppression fingerprint key (`--fingerprint-key-file`), shared with the filter pods of
# every SpamPolicy that references the store (their `--suppression-key-file`).
FINGERPRINT_KEY_MOUNT = "/etc/mailwarden/fingerprint-key"
FINGERPRINT_KEY_FILE = "key"
# Where the store keeps its fingerprint snapshot (`--fingerprint-dir`, 8 bytes per
# suppression): an emptyDir, rebuilt from the database when a pod starts.
FINGERPRINT_DIR = "/var/cache/mailwarden/fingerprints"  # not under DATA_MOUNT (the claim)
DSN_MOUNT = "/etc/mailwarden/dsn"
DSN_FILE = "dsn"
RESUBSCRIBE_MOUNT = "/etc/mailwarden/resubscribe"
RESUBSCRIBE_FILE = "token"
TLS_MOUNT = "/etc/mailwarden/tls"
DATA_MOUNT = "/var/lib/mailwarden"
SQLITE_FILE = "unsubscribe.db"

# Key files the server reads from the signing-key directory (`--signing-key-dir`).
SIGNING_KEY_CURRENT = "current"
SIGNING_KEY_PREVIOUS = "previous"

WORKLOAD_SUFFIX = "-unsubscribe"
HTTP_SUFFIX = "-unsubscribe-http"
DATA_SUFFIX = "-unsubscribe-data"
SIGNING_KEY_SUFFIX = "-signing-key"
FINGERPRINT_KEY_SUFFIX = "-fingerprint-key"
CLIENT_TLS_SUFFIX = "-unsubscribe-client-tls"
# Longest store name whose Service names still fit the 63-character DNS label limit.
MAX_NAME_LENGTH = 63 - len(HTTP_SUFFIX)


def workload_name(store: str) -> str:
    """Deployment, gRPC Service, HPA, PDB, ServiceMonitor and NetworkPolicy share this name."""
    return f"{store}{WORKLOAD_SUFFIX}"


def http_service_name(store: str) -> str:
    return f"{store}{HTTP_SUFFIX}"


def data_claim_name(store: str) -> str:
    return f"{store}{DATA_SUFFIX}"


def default_signing_key_secret(store: str) -> str:
    return f"{store}{SIGNING_KEY_SUFFIX}"


def signing_key_secret(owner: dict[str, Any]) -> str:
    """The signing-key Secret's name: `spec.signingKey.secretName` or `<store>-signing-key`."""
    configured = ((owner.get("spec") or {}).get("signingKey") or {}).get("secretName")
    return configured or default_signing_key_secret(owner["metadata"]["name"])


def default_fingerprint_key_secret(store: str) -> str:
    return f"{store}{FINGERPRINT_KEY_SUFFIX}"


def fingerprint_key_secret(owner: dict[str, Any]) -> str:
    """The fingerprint-key Secret's name: `spec.fingerprintKey.secretName` or
    `<store>-fingerprint-key`."""
    configured = ((owner.get("spec") or {}).get("fingerprintKey") or {}).get("secretName")
    return configured or default_fingerprint_key_secret(owner["metadata"]["name"])


def client_tls_secret(store: str, tls: dict[str, Any]) -> str:
    """The Secret filter pods connect to a TLS store with: `spec.tls.clientSecretName` or
    `<store>-unsubscribe-client-tls`."""
    return tls.get("clientSecretName") or f"{store}{CLIENT_TLS_SUFFIX}"


def grpc_target(store: str, namespace: str) -> str:
    """HOST:PORT of the store's gRPC Service, as filter pods in any namespace resolve it."""
    return f"{workload_name(store)}.{namespace}.svc:{GRPC_PORT}"


def selector_labels(store: str) -> dict[str, str]:
    """The pod selector: stable for the life of the Deployment (selectors are immutable)."""
    return {
        "app.kubernetes.io/name": "mailwarden-unsubscribe",
        "app.kubernetes.io/instance": store,
    }


def common_labels(store: str) -> dict[str, str]:
    return {
        **selector_labels(store),
        "app.kubernetes.io/component": "unsubscribe-store",
        "app.kubernetes.io/part-of": "mailwarden",
        "app.kubernetes.io/managed-by": common.MANAGED_BY,
        STORE_LABEL: store,
    }


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A controller owner reference: deleting the store cascades to the child."""
    return common.owner_reference(owner, KIND)


def child_metadata(owner: dict[str, Any], name: str, *, owned: bool = True,
                   extra_labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """Metadata of a child. `owned=False` for what must outlive the store (its data and its
    signing key): those carry the labels but no owner reference."""
    return common.metadata_for(owner, name,
                               {**common_labels(owner["metadata"]["name"]),
                                **(extra_labels or {})},
                               kind=KIND, owned=owned, annotations=annotations)
