"""The UnsubscribeStore CustomResourceDefinition (written with the others by
`python -m mailwarden_operator.crd`).

Cross-field rules live in CEL (`x-kubernetes-validations`) so the API server refuses an
impossible store at `kubectl apply`; `spec.spec_errors` repeats them for a server that
skipped them. Every string a CEL rule inspects has a `maxLength`, which keeps the rules
within the API server's cost budget.
"""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common import crd as common
from mailwarden_operator.unsubscribestore import naming

DEFAULT_MIN_REPLICAS = 2
DEFAULT_MAX_REPLICAS = 6
MIN_TOKEN_MAX_AGE_DAYS = 60  # CASL: an unsubscribe link must work for at least 60 days


def _secret_key_ref(description: str, default_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 253,
                     "description": "Secret name (same namespace as the store)."},
            "key": {"type": "string", "maxLength": 253, "default": default_key,
                    "pattern": r"^[-._a-zA-Z0-9]+$",
                    "description": f"Key within the Secret (default `{default_key}`)."},
        },
    }


STORAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Where suppressions are stored. `postgres`: any PostgreSQL-compatible "
    "database (CloudNativePG, Patroni, a managed service); highly available when the "
    "database is. `embedded`: SQLite inside the single store pod, for development (not "
    "highly available). The type cannot change after creation (move data with `mailwarden "
    "unsubscribe export` and `import`).",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["postgres", "embedded"],
                 "description": "postgres or embedded."},
        "postgres": {
            "type": "object",
            "description": "PostgreSQL connection (required for type postgres).",
            "required": ["dsnSecretRef"],
            "properties": {
                "dsnSecretRef": _secret_key_ref(
                    "Secret holding the libpq connection string (key/value or "
                    "postgresql:// URI). For failover use the cluster's read-write Service "
                    "or a multi-host DSN with target_session_attrs=read-write. A change of "
                    "the Secret rolls the store pods.", "dsn"),
            },
        },
        "embedded": {
            "type": "object",
            # No schema default here: the API server would add it to postgres stores too.
            "description": "SQLite in the store pod (type embedded): one replica, "
            "development only. Optional; its fields default as shown.",
            "properties": {
                "volume": {"type": "string", "enum": ["persistentVolumeClaim", "emptyDir"],
                           "default": "persistentVolumeClaim",
                           "description": "persistentVolumeClaim keeps the data across "
                           "restarts (a PVC `<name>-unsubscribe-data` is created and kept "
                           "when the store is deleted); emptyDir loses every suppression "
                           "when the pod goes (throwaway environments only)."},
                "size": {"type": "string", "default": "1Gi", "maxLength": 64,
                         "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$",
                         "description": "Size of the PersistentVolumeClaim (about 200 "
                         "bytes per suppression plus the change log)."},
                "storageClassName": {"type": "string", "maxLength": 253,
                                     "description": "StorageClass of the claim (default: "
                                     "the cluster's default class)."},
            },
        },
    },
    "x-kubernetes-validations": [
        {"rule": "self.type != 'postgres' || has(self.postgres)",
         "message": "storage.type postgres needs storage.postgres.dsnSecretRef"},
        {"rule": "self.type == 'postgres' || !has(self.postgres)",
         "message": "storage.postgres is only for storage.type postgres"},
        {"rule": "self.type == 'embedded' || !has(self.embedded)",
         "message": "storage.embedded is only for storage.type embedded"},
        {"rule": "self.type == oldSelf.type",
         "message": "storage.type cannot change (move the data with `mailwarden unsubscribe "
         "export` and `import` into a new store)"},
    ],
}

SERVER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Settings of the store process (`mailwarden unsubscribe-server`).",
    "default": {},
    "properties": {
        "drainSeconds": {"type": "integer", "minimum": 0, "maximum": 600, "default": 5,
                         "description": "After SIGTERM the pod reports not ready and keeps "
                         "serving for this long."},
        "graceSeconds": {"type": "integer", "minimum": 0, "maximum": 600, "default": 10,
                         "description": "After draining, in-flight calls (Watch streams, "
                         "imports) get this long to finish."},
        "preStopSeconds": common.pre_stop_seconds(5),
        "readinessIntervalSeconds": {"type": "integer", "minimum": 1, "maximum": 60,
                                     "default": 2,
                                     "description": "How often the server re-checks the "
                                     "database (reachability, schema, replication)."},
        "logLevel": {"type": "string", "default": "info",
                     "enum": ["debug", "info", "warning", "error"],
                     "description": "Server log level."},
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The store's storage, durability, keys and how it is served.",
    "required": ["storage"],
    "properties": {
        "storage": STORAGE_SCHEMA,
        "durability": {
            "type": "string", "enum": ["local", "replicated"], "default": "local",
            "description": "replicated: the store reports Ready, and accepts writes, only "
            "while PostgreSQL confirms a synchronous standby in sync (the database role "
            "needs pg_monitor to see pg_stat_replication). local: a commit on the primary "
            "is enough."},
        "signingKey": {
            "type": "object",
            "description": "The Secret with the HMAC keys of one-click tokens: key "
            "`current` (one key, at least 32 bytes) and optional `previous` (one key per "
            "line, still accepted; optionally followed by ` retired=YYYY-MM-DD`, as "
            "`mailwarden token rotate` writes). Generated once when absent (32 random bytes, "
            "base64url), never overwritten, and kept when the store is deleted so links "
            "already sent keep working. Editing it rolls the store pods.",
            "default": {},
            "properties": {
                "secretName": {"type": "string", "maxLength": 253,
                               "description": "Secret name (default "
                               "`<name>-signing-key`)."},
            },
        },
        "fingerprintKey": {
            "type": "object",
            "description": "The Secret with the key of the suppression fingerprints (keyed "
            "BLAKE2b of address and scope) that the store and the filter pods of every "
            "SpamPolicy referencing it share: key `key`, at least 32 bytes (raw, or hex "
            "text). With it the store serves the compact fingerprint snapshot a filter pod "
            "starts from, the pod's workers share one mapped index, and Forget keeps an "
            "erased address suppressed by its fingerprint. Generated once when absent (32 "
            "random bytes, hex), never overwritten, and kept when the store is deleted: "
            "forgotten suppressions are kept under it. Editing it rolls the store and filter "
            "pods (rotation: docs/unsubscribe.md).",
            "default": {},
            "properties": {
                "secretName": {"type": "string", "maxLength": 253,
                               "description": "Secret name (default "
                               "`<name>-fingerprint-key`)."},
            },
        },
        "resubscribe": {
            "type": "object",
            "description": "The admin credential: Import, Export and Resubscribe calls must "
            "present it as a bearer token (`--admin-token-file`). Without it those methods "
            "are disabled.",
            "required": ["secretRef"],
            "properties": {
                "secretRef": _secret_key_ref("Secret holding the credential.", "token"),
            },
        },
        "tls": {
            "type": "object",
            "description": "Serve the gRPC API over TLS (`--tls-dir`) from a Secret holding "
            "tls.crt, tls.key and (for client certificates) ca.crt, e.g. a cert-manager "
            "Certificate whose dnsNames include `<name>-unsubscribe.<namespace>.svc`; the "
            "server reloads rotated files itself. The one-click HTTP port is unaffected "
            "(terminate its TLS at the Ingress). SpamPolicies referencing this store "
            "connect over TLS with `clientSecretName`.",
            "required": ["secretName"],
            "properties": {
                "secretName": {"type": "string", "maxLength": 253,
                               "description": "Secret with the server certificate."},
                "requireClientCert": {
                    "type": "boolean", "default": False,
                    "description": "Mutual TLS (`--require-client-cert`): refuse gRPC "
                    "clients without a certificate signed by ca.crt."},
                "clientSecretName": {
                    "type": "string", "maxLength": 253,
                    "description": "Secret the filter pods of referencing SpamPolicies "
                    "connect with (`--suppression-store-tls-dir`): ca.crt (the CA that "
                    "signed the store's certificate) and, for requireClientCert, the "
                    "client's tls.crt and tls.key. Default: `<name>-unsubscribe-client-tls`."},
                "adminClients": {
                    "type": "array", "maxItems": 64, "default": [],
                    "description": "Client certificate names (CN or DNS SAN) allowed to "
                    "call Import, Export and Resubscribe without the bearer credential "
                    "(`--admin-client`); needs requireClientCert.",
                    "items": {"type": "string", "maxLength": 253},
                    "x-kubernetes-list-type": "set"},
            },
            "x-kubernetes-validations": [{
                "rule": "size(self.adminClients) == 0 || self.requireClientCert",
                "message": "tls.adminClients names client certificates: it needs "
                "tls.requireClientCert"}],
        },
        "networkPolicy": {
            "type": "object",
            "description": "A NetworkPolicy (rendered unless disabled) admitting to the gRPC "
            "port only the filter pods of this namespace and `grpcClients`; the one-click "
            "port stays open, the metrics port is open to `metricsFrom` (everyone when "
            "empty). Needs a CNI that enforces NetworkPolicies.",
            "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": True,
                            "description": "Render the NetworkPolicy (false: none; the "
                            "gRPC API is then reachable by every pod of the cluster)."},
                "grpcClients": {
                    "type": "array", "maxItems": 64, "default": [],
                    "description": "NetworkPolicyPeers (podSelector, namespaceSelector, "
                    "ipBlock) also admitted to the gRPC port: senders, import/export jobs.",
                    "items": {"type": "object",
                              "x-kubernetes-preserve-unknown-fields": True}},
                "metricsFrom": {
                    "type": "array", "maxItems": 64, "default": [],
                    "description": "NetworkPolicyPeers admitted to the metrics port "
                    "(Prometheus); empty: everyone.",
                    "items": {"type": "object",
                              "x-kubernetes-preserve-unknown-fields": True}},
            },
        },
        "oneClick": {
            "type": "object",
            "description": "The RFC 8058 one-click endpoint (POST /u/<token>).",
            "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": True,
                            "description": "Serve one-click unsubscribes (false: the HTTP "
                            "port serves only /healthz and /readyz, and no signing key is "
                            "needed)."},
                "tokenMaxAgeDays": {
                    "type": "integer", "minimum": 0, "maximum": 36500, "default": 0,
                    "description": "Tokens older than this many days count as expired: "
                    "an authentic one is still honoured (recorded) and counted apart; 0 "
                    "(default) never. CASL requires at least 60.",
                    "x-kubernetes-validations": [{
                        "rule": f"self == 0 || self >= {MIN_TOKEN_MAX_AGE_DAYS}",
                        "message": "oneClick.tokenMaxAgeDays must be 0 (never expire) or at "
                        f"least {MIN_TOKEN_MAX_AGE_DAYS} (CASL)"}]},
            },
        },
        "http": {
            "type": "object",
            "description": "How the one-click endpoint is reached. The operator creates the "
            "Service `<name>-unsubscribe-http`; publish it through your Ingress or Gateway "
            "(TLS terminates there) at `publicBaseURL`.",
            "default": {},
            "properties": {
                "publicBaseURL": {
                    "type": "string", "maxLength": 2048,
                    "description": "Public https URL at which mailbox providers reach the "
                    "endpoint, e.g. https://unsubscribe.example.com. Senders mint links "
                    "with it (`mailwarden token headers --base-url`); shown in "
                    "status.endpoints.publicBaseURL. Plain http only for localhost.",
                    "x-kubernetes-validations": [{
                        "rule": "self.startsWith('https://') || "
                        "self.matches('^http://(localhost|127[.]0[.]0[.]1)(:[0-9]+)?(/.*)?$')",
                        "message": "http.publicBaseURL must be an https:// URL (plain http "
                        "only for localhost)"}]},
                "service": {
                    "type": "object",
                    "description": "The HTTP Service in front of the store pods.",
                    "default": {},
                    "properties": {
                        "type": {"type": "string",
                                 "enum": ["ClusterIP", "NodePort", "LoadBalancer"],
                                 "default": "ClusterIP",
                                 "description": "Service type (ClusterIP behind an "
                                 "Ingress/Gateway is the usual choice)."},
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535,
                                 "default": 80,
                                 "description": "Service port (the pods listen on 8080)."},
                        "annotations": {"type": "object",
                                        "additionalProperties": {"type": "string"},
                                        "description": "Annotations of the Service (for "
                                        "example for a cloud load balancer)."},
                    },
                },
            },
        },
        "image": {"type": "string", "maxLength": 1024,
                  "description": "Store server image. Default: the operator's "
                  "`--filter-image` (the chart sets it to the release's image)."},
        "imagePullPolicy": common.image_pull_policy(
            "Image pull policy of the store containers."),
        "imagePullSecrets": common.image_pull_secrets("the store pods"),
        "serviceAccountName": common.service_account_name("the store pods"),
        "replicas": common.replica_bounds(
            "Replica bounds; the HorizontalPodAutoscaler owns the count between them. "
            "Embedded storage runs exactly one replica.",
            default_min=DEFAULT_MIN_REPLICAS, default_max=DEFAULT_MAX_REPLICAS, maximum=100,
            min_description="Fewest replicas (at least 2 for high availability; 1 for "
            "embedded storage).",
            max_description="Most replicas the autoscaler may run (1 for embedded storage)."),
        "autoscaling": {
            "type": "object",
            "description": "Autoscaling (PostgreSQL storage only): fast scale-up, slow "
            "scale-down.",
            "default": {},
            "properties": {
                "cpuUtilization": common.cpu_utilization(),
                "scaleDownStabilizationSeconds": common.scale_down_stabilization(),
            },
        },
        "disruption": {
            "type": "object",
            "description": "Voluntary disruption budget (PostgreSQL storage only).",
            "default": {},
            "properties": {
                "maxUnavailable": common.positive_int_or_string(
                    "disruption.maxUnavailable",
                    "Pods that may be evicted at once (at least 1, or a percentage).", 1),
            },
        },
        "resources": {
            "type": "object",
            "description": "Compute resources of the store container. Default: requests "
            "cpu 100m, memory 128Mi; limit memory 256Mi. With PostgreSQL storage a CPU "
            "request (or limit) is required: the autoscaler's target is a percentage of it.",
            "properties": common.resource_properties(),
        },
        "server": SERVER_SCHEMA,
        "monitoring": common.monitoring("Prometheus scraping of the store pods' metrics port."),
        "scheduling": common.scheduling(
            "Where the store pods may run. Pods always spread across zones and nodes.",
            pods="the store pods"),
    },
    "x-kubernetes-validations": [
        {"rule": "self.storage.type != 'embedded' || self.durability != 'replicated'",
         "message": "durability replicated needs PostgreSQL with a synchronous standby; "
         "embedded SQLite cannot replicate"},
        {"rule": "self.storage.type == 'embedded' || !has(self.resources) || " +
                 common.CPU_REQUESTED_RULE.format(r="self.resources"),
         "message": common.CPU_REQUESTED_MESSAGE},
        {"rule": "self.storage.type != 'embedded' || "
                 "(self.replicas.min == 1 && self.replicas.max == 1)",
         "message": "embedded storage runs exactly one replica: set replicas.min and "
         "replicas.max to 1"},
    ],
}
CONDITION_SCHEMA = common.condition_schema(
    "Ready, Progressing, StorageReady, Degraded or ApplyFailed.")

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Observed state, written by the operator.",
    "properties": {
        "observedGeneration": {"type": "integer", "format": "int64",
                               "description": "The generation last reconciled."},
        "conditions": {"type": "array", "items": CONDITION_SCHEMA,
                       "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["type"],
                       "description": "Ready, Progressing, StorageReady, Degraded, "
                       "ApplyFailed (the API server refused a child: its message)."},
        "storage": {"type": "string", "description": "postgres or embedded."},
        "durability": {"type": "string", "description": "local or replicated."},
        "highlyAvailable": {"type": "boolean",
                            "description": "True when PostgreSQL-backed with at least two "
                            "ready store pods. Embedded storage is never highly available. "
                            "Whether the database survives a node loss is up to its own "
                            "setup (durability replicated verifies synchronous "
                            "replication)."},
        "signingKeySecret": {"type": "string",
                             "description": "Secret with the one-click signing keys."},
        "fingerprintKeySecret": {"type": "string",
                                 "description": "Secret with the suppression fingerprint "
                                 "key the store and its filter pods share; set once it "
                                 "exists and holds a usable key."},
        "fingerprintKeyVersion": {"type": "string",
                                  "description": "That Secret's resourceVersion (never its "
                                  "content): a change rolls the filter pods of referencing "
                                  "SpamPolicies onto the new key."},
        "configHash": {"type": "string",
                       "description": "Hash of the desired pod template (configuration and "
                       "Secret versions)."},
        "endpoints": {
            "type": "object",
            "description": "Where clients reach the store.",
            "properties": {
                "grpc": {"type": "string",
                         "description": "HOST:PORT of the gRPC API (what SpamPolicies with "
                         "unsubscribeStoreRef pass to the filter pods)."},
                "http": {"type": "string",
                         "description": "In-cluster URL of the one-click endpoint."},
                "publicBaseURL": {"type": "string",
                                  "description": "spec.http.publicBaseURL: base of the "
                                  "links senders mint."},
            },
        },
        "replicas": {"type": "integer", "description": "Pods of the Deployment."},
        "readyReplicas": {"type": "integer",
                          "description": "Pods whose store reports Ready."},
        "updatedReplicas": {"type": "integer",
                            "description": "Pods on the desired configuration."},
        "availableReplicas": {"type": "integer", "description": "Available pods."},
        "kopf": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "description": "kopf's own bookkeeping (do not edit)."},
    },
}


def unsubscribestore_crd() -> dict[str, Any]:
    """The UnsubscribeStore CustomResourceDefinition."""
    return common.custom_resource_definition(
        kind=naming.KIND, plural=naming.PLURAL, singular=naming.SINGULAR,
        short_names=["unsub", "unsubstore"],
        description="UnsubscribeStore: a durable unsubscribe/suppression store with the "
        "RFC 8058 one-click endpoint, served by autoscaled store pods, whose changes "
        "reach every filter pod of the SpamPolicies that reference it.",
        spec=SPEC_SCHEMA, status=STATUS_SCHEMA, max_name_length=naming.MAX_NAME_LENGTH,
        ready_description="Whether the store serves.",
        printer_columns=[
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas",
             "description": "Store pods reporting Ready."},
            {"name": "Storage", "type": "string", "jsonPath": ".spec.storage.type",
             "description": "postgres or embedded."},
            {"name": "Durability", "type": "string", "priority": 1,
             "jsonPath": ".spec.durability", "description": "local or replicated."},
            {"name": "HA", "type": "boolean", "priority": 1,
             "jsonPath": ".status.highlyAvailable",
             "description": "Whether the store is highly available."},
        ])
