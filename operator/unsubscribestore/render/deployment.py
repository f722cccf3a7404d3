"""The store Deployment: `mailwarden unsubscribe-server` behind a schema-migration init
container.

Why an init container for the migration (and not a Job, nor the server migrating itself):
- it runs in every pod before the server starts, with the same image — so a new image's
  migrations are applied before the first pod of that image serves, while pods of the old
  image keep serving (migrations are additive and serialised by an advisory lock, so
  concurrent pods are safe, and re-running them is a no-op);
- a failing migration is visible where people look: the pod shows `Init:Error` /
  `Init:CrashLoopBackOff` and `kubectl logs -c migrate` has the database's message, while
  the server itself runs with `--no-migrate` and never does DDL on its serving path;
- a Job would need its own RBAC (jobs create/delete/watch), one Job per image because Job
  templates are immutable, clean-up, and gating the rollout on its completion.
The cost: a pod created while the database is down waits in the kubelet's init-container
back-off (up to 5 minutes) after the database returns; pods already running are unaffected.

Probes: liveness and startup on `/healthz` (the process answers; never the database, or a
database outage would restart every pod), readiness on `/readyz` (503 while the store is
not Ready: database unreachable, schema behind, or durability `replicated` unmet).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from mailwarden_operator.common.render import RUN_AS_USER, RenderSettings, pod_identity
from mailwarden_operator.unsubscribestore import naming

DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"},
                     "limits": {"memory": "256Mi"}}
# Secret files readable by the pod's group (fsGroup) only.
SECRET_MODE = 0o440
# Seconds added to preStop + drain + grace before the kubelet sends SIGKILL: the server
# closes its database pool after the grace period.
TERMINATION_MARGIN_SECONDS = 10


def store_args(spec: dict[str, Any]) -> list[str]:
    """The storage flags, shared by the migration and the server (the same database)."""
    if spec["storage"]["type"] == "postgres":
        args = ["--store", "postgres",
                "--dsn-file", f"{naming.DSN_MOUNT}/{naming.DSN_FILE}"]
    else:
        args = ["--store", "sqlite",
                "--sqlite-path", f"{naming.DATA_MOUNT}/{naming.SQLITE_FILE}"]
    return args + ["--durability", spec["durability"]]


def migrate_args(spec: dict[str, Any]) -> list[str]:
    return ["unsubscribe-server", *store_args(spec),
            "--log-level", spec["server"]["logLevel"], "--migrate-only"]


def server_args(spec: dict[str, Any]) -> list[str]:
    """`mailwarden unsubscribe-server` arguments (the server's CLI contract)."""
    server = spec["server"]
    args = ["unsubscribe-server", *store_args(spec),
            # `[::]`: IPv4 and IPv6, so IPv6-only and dual-stack clusters reach the pod.
            "--grpc-address", f"[::]:{naming.GRPC_PORT}",
            "--http-address", f"[::]:{naming.HTTP_PORT}",
            "--metrics-address", f"[::]:{naming.METRICS_PORT}"]
    one_click = spec["oneClick"]
    if one_click["enabled"]:
        args += ["--signing-key-dir", naming.SIGNING_KEY_MOUNT]
        if one_click["tokenMaxAgeDays"]:
            args += ["--token-max-age-days", str(one_click["tokenMaxAgeDays"])]
    else:
        args.append("--no-one-click")
    # Always: the key filter pods share (fingerprint snapshot at their start, Forget).
    args += ["--fingerprint-key-file",
             f"{naming.FINGERPRINT_KEY_MOUNT}/{naming.FINGERPRINT_KEY_FILE}",
             "--fingerprint-dir", naming.FINGERPRINT_DIR]
    if "resubscribe" in spec:
        args += ["--admin-token-file",
                 f"{naming.RESUBSCRIBE_MOUNT}/{naming.RESUBSCRIBE_FILE}"]
    if "tls" in spec:
        # The probes use the HTTP port, so gRPC can speak only TLS.
        args += ["--tls-dir", naming.TLS_MOUNT]
        if spec["tls"].get("requireClientCert"):
            args.append("--require-client-cert")
        for client in spec["tls"].get("adminClients") or ():
            args += ["--admin-client", client]
    args += ["--no-migrate",  # the init container migrated
             "--readiness-interval", str(server["readinessIntervalSeconds"]),
             "--drain-seconds", str(server["drainSeconds"]),
             "--grace-seconds", str(server["graceSeconds"]),
             "--log-level", server["logLevel"]]
    return args


def termination_grace_seconds(spec: dict[str, Any]) -> int:
    server = spec["server"]
    return (server["preStopSeconds"] + server["drainSeconds"] + server["graceSeconds"]
            + TERMINATION_MARGIN_SECONDS)


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
            "timeoutSeconds": 2, "failureThreshold": failures}


def _spread(store: str, key: str) -> dict[str, Any]:
    return {
        "maxSkew": 1,
        "topologyKey": key,
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": naming.selector_labels(store)},
        "matchLabelKeys": ["pod-template-hash"],
    }


def _volumes(owner: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    """(volumes, server mounts, migration mounts)."""
    spec = owner["spec"]
    storage = spec["storage"]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    server: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    migrate: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if storage["type"] == "postgres":
        ref = storage["postgres"]["dsnSecretRef"]
        volumes.append({"name": "dsn", "secret": {
            "secretName": ref["name"], "defaultMode": SECRET_MODE,
            "items": [{"key": ref["key"], "path": naming.DSN_FILE}]}})
        mount = {"name": "dsn", "mountPath": naming.DSN_MOUNT, "readOnly": True}
        server.append(mount)
        migrate.append(dict(mount))
    else:
        embedded = storage["embedded"]
        if embedded["volume"] == "persistentVolumeClaim":
            volumes.append({"name": "data", "persistentVolumeClaim": {
                "claimName": naming.data_claim_name(owner["metadata"]["name"])}})
        else:
            volumes.append({"name": "data", "emptyDir": {"sizeLimit": embedded["size"]}})
        mount = {"name": "data", "mountPath": naming.DATA_MOUNT}
        server.append(mount)
        migrate.append(dict(mount))
    if spec["oneClick"]["enabled"]:
        # The whole Secret: `current` and, after a rotation, `previous`.
        volumes.append({"name": "signing-key", "secret": {
            "secretName": naming.signing_key_secret(owner),
            "defaultMode": SECRET_MODE}})
        server.append({"name": "signing-key", "mountPath": naming.SIGNING_KEY_MOUNT,
                       "readOnly": True})
    volumes.append({"name": "fingerprint-key", "secret": {
        "secretName": naming.fingerprint_key_secret(owner), "defaultMode": SECRET_MODE,
        "items": [{"key": naming.FINGERPRINT_KEY_FILE,
                   "path": naming.FINGERPRINT_KEY_FILE}]}})
    server.append({"name": "fingerprint-key", "mountPath": naming.FINGERPRINT_KEY_MOUNT,
                   "readOnly": True})
    # The fingerprint snapshot (8.5 bytes per suppression; rebuilt from the database at
    # start, so nothing to keep). No size limit: it grows with the store, and the 64 MiB
    # /tmp would have the pod evicted at ~7.5 M suppressions.
    volumes.append({"name": "fingerprints", "emptyDir": {}})
    server.append({"name": "fingerprints", "mountPath": naming.FINGERPRINT_DIR})
    if "resubscribe" in spec:
        ref = spec["resubscribe"]["secretRef"]
        volumes.append({"name": "resubscribe", "secret": {
            "secretName": ref["name"], "defaultMode": SECRET_MODE,
            "items": [{"key": ref["key"], "path": naming.RESUBSCRIBE_FILE}]}})
        server.append({"name": "resubscribe", "mountPath": naming.RESUBSCRIBE_MOUNT,
                       "readOnly": True})
    if "tls" in spec:
        # Not in the secret-versions annotation: the server reloads rotated certificates
        # itself, so a renewal never rolls the pods.
        volumes.append({"name": "tls", "secret": {
            "secretName": spec["tls"]["secretName"], "defaultMode": SECRET_MODE}})
        server.append({"name": "tls", "mountPath": naming.TLS_MOUNT, "readOnly": True})
    return volumes, server, migrate


def secret_versions_annotation(versions: dict[str, str]) -> str:
    """`role=resourceVersion,...` of the Secrets the pods mount: when one changes (a key
    rotation, a new database password) the template changes and the pods roll. Only
    versions, never content, leave the operator."""
    return ",".join(f"{role}={version}" for role, version in sorted(versions.items()))


def config_hash(template: dict[str, Any]) -> str:
    text = json.dumps(template, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_store_deployment(owner: dict[str, Any], settings: RenderSettings,
                            secret_versions: dict[str, str]) -> dict[str, Any]:
    spec = owner["spec"]
    name = owner["metadata"]["name"]
    server = spec["server"]
    embedded = spec["storage"]["type"] == "embedded"
    image = spec.get("image") or settings.default_image
    resources = spec.get("resources") or DEFAULT_RESOURCES
    volumes, server_mounts, migrate_mounts = _volumes(owner)
    migrate = {
        "name": naming.MIGRATE_CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": spec["imagePullPolicy"],
        "command": ["mailwarden"],
        "args": migrate_args(spec),
        "resources": copy.deepcopy(resources),
        "securityContext": _security_context(),
        "volumeMounts": migrate_mounts,
    }
    container = {
        "name": naming.CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": spec["imagePullPolicy"],
        "command": ["mailwarden"],
        "args": server_args(spec),
        "ports": [
            {"name": "grpc", "containerPort": naming.GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": naming.HTTP_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": naming.METRICS_PORT,
             "protocol": "TCP"},
        ],
        # The listeners open at once (before the database answers): a minute is plenty.
        "startupProbe": _http_probe("/healthz", period=2, failures=30),
        "readinessProbe": _http_probe("/readyz", period=2, failures=2),
        "livenessProbe": _http_probe("/healthz", period=10, failures=3),
        "lifecycle": {"preStop": {"sleep": {"seconds": server["preStopSeconds"]}}},
        "resources": copy.deepcopy(resources),
        "securityContext": _security_context(),
        "volumeMounts": server_mounts,
    }
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if embedded:
        # Skip the recursive chown of an already-owned volume on every start.
        pod_security["fsGroupChangePolicy"] = "OnRootMismatch"
    pod_spec: dict[str, Any] = {
        "initContainers": [migrate],
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        # The store never calls the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "topologySpreadConstraints": [_spread(name, "topology.kubernetes.io/zone"),
                                      _spread(name, "kubernetes.io/hostname")],
    }
    scheduling = spec.get("scheduling") or {}
    for key in ("nodeSelector", "tolerations", "priorityClassName"):
        if key in scheduling:
            pod_spec[key] = copy.deepcopy(scheduling[key])
    pod_spec.update(pod_identity(spec))
    template: dict[str, Any] = {
        "metadata": {
            "labels": naming.common_labels(name),
            "annotations": {naming.SECRET_VERSIONS_ANNOTATION:
                            secret_versions_annotation(secret_versions)},
        },
        "spec": pod_spec,
    }
    digest = config_hash(template)
    template["metadata"]["annotations"][naming.CONFIG_HASH_ANNOTATION] = digest
    if embedded:
        # One SQLite writer: never two pods on the file, not even during an update.
        strategy: dict[str, Any] = {"type": "Recreate"}
    else:
        strategy = {"type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": naming.child_metadata(
            owner, naming.workload_name(name),
            annotations={naming.CONFIG_HASH_ANNOTATION: digest}),
        "spec": {
            # PostgreSQL: only used on creation, the HPA owns the count afterwards.
            # Embedded: always 1 (enforced on every reconcile).
            "replicas": 1 if embedded else spec["replicas"]["min"],
            "selector": {"matchLabels": naming.selector_labels(name)},
            "strategy": strategy,
            "minReadySeconds": 5,
            "progressDeadlineSeconds": 600,
            "revisionHistoryLimit": 5,
            "template": template,
        },
    }
