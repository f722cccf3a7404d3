"""Names, labels, mount paths and ports of a SpamPolicy's children, shared by the renderers,
the reconciler and the chart. The ports are the filter server's wire contract
(`mailwarden.wire`); the group and the shared labels come from `common/naming.py`."""

from __future__ import annotations

from typing import Any

from mailwarden import wire
from mailwarden_operator.common import naming as common

KIND = "SpamPolicy"
PLURAL = "spampolicies"

HASH_ANNOTATION = f"{common.GROUP}/policy-hash"
# rollout.strategy Shadow: the candidate the pods evaluate in shadow (pod template), and
# the annotation on a SpamPolicy that promotes the candidate with that hash.
SHADOW_HASH_ANNOTATION = f"{common.GROUP}/shadow-policy-hash"
PROMOTE_ANNOTATION = f"{common.GROUP}/promote-policy"
POLICY_LABEL = f"{common.GROUP}/spampolicy"
# rollout.strategy Canary: the canary Deployment's pods carry TRACK_LABEL=CANARY_TRACK (in
# its selector too); the main Deployment's pods have no such label.
TRACK_LABEL = f"{common.GROUP}/track"
CANARY_TRACK = "canary"
ROLE_LABEL = common.ROLE_LABEL
HASH_LABEL = f"{common.GROUP}/policy-hash"
SERVICE_ROLE_LABEL = common.SERVICE_ROLE_LABEL

GRPC_PORT = wire.FILTER_GRPC_PORT
METRICS_PORT = wire.FILTER_METRICS_PORT
# spec.protocols besides gRPC: name -> (container port, Service port, `mailwarden serve` flag)
MAIL_PROTOCOLS: dict[str, tuple[int, int, str]] = {
    "milter": (wire.FILTER_MILTER_PORT, wire.FILTER_MILTER_PORT, "--milter-port"),
    "spamd": (wire.FILTER_SPAMD_PORT, wire.FILTER_SPAMD_SERVICE_PORT, "--spamd-port"),
    "rspamd": (wire.FILTER_RSPAMD_PORT, wire.FILTER_RSPAMD_PORT, "--rspamd-port"),
}
PROTOCOLS = ("grpc", *MAIL_PROTOCOLS)
HEALTH_PORT = wire.FILTER_HEALTH_PORT
POLICY_MOUNT = "/etc/mailwarden/policy"
SHADOW_POLICY_MOUNT = "/etc/mailwarden/shadow-policy"
TLS_MOUNT = "/etc/mailwarden/tls"
SIGNING_KEYS_MOUNT = "/etc/mailwarden/signing-keys"  # the store's, for the bulk gate
SUPPRESSION_TLS_MOUNT = "/etc/mailwarden/suppression-tls"  # client side of the store's TLS
# The store's fingerprint-key Secret (`--suppression-key-file`): the pod's index is then the
# store's fingerprint snapshot, downloaded in one transfer (docs/unsubscribe.md).
SUPPRESSION_KEY_MOUNT = "/etc/mailwarden/suppression-key"
# On the pod template: the key Secret's resourceVersion, so editing the key rolls the pods.
SUPPRESSION_KEY_ANNOTATION = f"{common.GROUP}/suppression-key-version"
# The pod's suppression index (docs/unsubscribe.md): 8.5 bytes per suppression, so not in
# the 64 MiB /tmp (past ~7.5 M suppressions the kubelet would evict the pod).
SUPPRESSION_INDEX_MOUNT = "/var/lib/mailwarden/suppressions"
CONTAINER_NAME = "filter"

# Longest SpamPolicy name whose children still fit the 63-character DNS label limit:
# "<name>-filter-headless" is the longest child name.
HEADLESS_SUFFIX = "-filter-headless"
MAX_NAME_LENGTH = 63 - len(HEADLESS_SUFFIX)


def mail_protocols(spec: dict[str, Any]) -> list[str]:
    """The mail-server protocols a (defaulted) spec turns on, in a fixed order."""
    wanted = set(spec.get("protocols") or ())
    return [name for name in MAIL_PROTOCOLS if name in wanted]


def workload_name(policy_name: str) -> str:
    """Deployment, ClusterIP Service, HPA, PDB and ServiceMonitor share this name."""
    return f"{policy_name}-filter"


def canary_name(policy_name: str) -> str:
    """The canary Deployment (rollout.strategy Canary), behind the same Services."""
    return f"{policy_name}-filter-canary"


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
        "app.kubernetes.io/managed-by": common.MANAGED_BY,
        POLICY_LABEL: policy_name,
    }


def child_metadata(owner: dict[str, Any], name: str, *,
                   extra_labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """Metadata of a child of SpamPolicy `owner` (owned: deleting the policy deletes it)."""
    return common.metadata_for(owner, name,
                               {**common_labels(owner["metadata"]["name"]),
                                **(extra_labels or {})},
                               kind=KIND, annotations=annotations)
