"""The filter Deployment: one rolling update per policy hash, never below capacity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailwarden import wire
from mailwarden_operator.common.render import RUN_AS_USER, RenderSettings, pod_identity
from mailwarden_operator.spampolicy import learning, naming
from mailwarden_operator.spampolicy.render.tolerations import pod_tolerations
from mailwarden_operator.unsubscribestore import naming as store_naming

DEFAULT_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"},
                     "limits": {"memory": "512Mi"}}
# Seconds added to preStop + drain + grace before the kubelet sends SIGKILL: the filter
# server's supervisor gives its workers drain + grace + 10 s to exit before killing them,
# and then needs a moment to exit itself.
TERMINATION_MARGIN_SECONDS = 15


@dataclass(frozen=True)
class SuppressionKey:
    """The referenced store's fingerprint-key Secret, as the filter pods mount it."""
    secret: str            # its name (the store's status.fingerprintKeySecret)
    version: str           # its resourceVersion: a new one (a rotation) rolls the pods


def server_args(spec: dict[str, Any], suppression_store: str | None = None,
                store_tls: bool = False, key_file: bool = False) -> list[str]:
    """`mailwarden serve` arguments for this spec (the filter server's CLI contract);
    `suppression_store` is the HOST:PORT of the referenced UnsubscribeStore, `store_tls`
    whether it serves TLS (the client Secret is mounted at SUPPRESSION_TLS_MOUNT),
    `key_file` whether the store's fingerprint key is mounted at SUPPRESSION_KEY_MOUNT."""
    server = spec["server"]
    args = ["serve",
            "--policy-dir", naming.POLICY_MOUNT,
            "--grpc-port", str(naming.GRPC_PORT),
            "--metrics-port", str(naming.METRICS_PORT),
            "--drain-seconds", str(server["drainSeconds"]),
            "--grace-seconds", str(server["graceSeconds"]),
            "--log-level", server["logLevel"]]
    for key, flag in (("workers", "--workers"), ("maxMessageBytes", "--max-message-bytes"),
                      ("maxConnectionAgeMs", "--max-connection-age-ms"),
                      ("maxConcurrentRpcs", "--max-concurrent-rpcs")):
        if key in server:
            args += [flag, str(server[key])]
    for protocol in naming.mail_protocols(spec):
        container_port, _, flag = naming.MAIL_PROTOCOLS[protocol]
        args += [flag, str(container_port)]
    if "tls" in spec:
        # The kubelet's gRPC probe speaks plaintext: health gets a plaintext port of its
        # own (grpc.health.v1 only; Classify stays behind TLS).
        args += ["--tls-dir", naming.TLS_MOUNT, "--health-port", str(naming.HEALTH_PORT)]
        if spec["tls"].get("requireClientCert"):
            args.append("--require-client-cert")
    if suppression_store:
        args += ["--suppression-store", suppression_store,
                 "--suppression-index-dir", naming.SUPPRESSION_INDEX_MOUNT]
        if store_tls:
            args += ["--suppression-store-tls-dir", naming.SUPPRESSION_TLS_MOUNT]
        if key_file:
            args += ["--suppression-key-file",
                     f"{naming.SUPPRESSION_KEY_MOUNT}/{store_naming.FINGERPRINT_KEY_FILE}"]
        if bulk_gate_keys(spec):
            args += ["--signing-key-dir", naming.SIGNING_KEYS_MOUNT]
    return args


def bulk_gate_keys(spec: dict[str, Any]) -> bool:
    """Whether the filter pods get the store's signing keys: only when the policy's bulk
    gate checks one-click tokens (authentication.bulkGate) and a store is referenced.
    The keys could mint tokens too, so pods that do not need them never see them."""
    auth = (spec.get("policy") or {}).get("authentication") or {}
    return bool(spec.get("unsubscribeStoreRef")) and \
        bool((auth.get("bulkGate") or {}).get("enabled"))


def suppression_store(owner: dict[str, Any]) -> str | None:
    """HOST:PORT of the UnsubscribeStore named by `spec.unsubscribeStoreRef`, or None.

    Derived from the reference alone (not from whether the store exists or is ready), so a
    store coming and going never rolls the filter pods; they reconnect on their own."""
    ref = owner["spec"].get("unsubscribeStoreRef")
    if not ref:
        return None
    return store_naming.grpc_target(ref["name"], owner["metadata"]["namespace"])


def store_client_tls_secret(owner: dict[str, Any],
                            store: dict[str, Any] | None) -> str | None:
    """The Secret the filter pods connect to the referenced store with, or None when the
    store serves plaintext (or does not exist: then there is nothing to connect to; the
    pods roll onto TLS when it appears with `spec.tls`)."""
    ref = owner["spec"].get("unsubscribeStoreRef")
    if not ref or store is None:
        return None
    tls = (store.get("spec") or {}).get("tls")
    if not tls:
        return None
    return store_naming.client_tls_secret(ref["name"], tls)


def termination_grace_seconds(spec: dict[str, Any]) -> int:
    server = spec["server"]
    return (server["preStopSeconds"] + server["drainSeconds"] + server["graceSeconds"]
            + TERMINATION_MARGIN_SECONDS)


def _grpc_probe(port: int, period: int, failures: int, timeout: int = 2) -> dict[str, Any]:
    # Native gRPC probe on grpc.health.v1 (overall service ""): NOT_SERVING until the
    # policy is compiled and again as soon as SIGTERM arrives.
    return {"grpc": {"port": port}, "periodSeconds": period,
            "timeoutSeconds": timeout, "failureThreshold": failures}


def _spread(policy_name: str, key: str) -> dict[str, Any]:
    return {
        "maxSkew": 1,
        "topologyKey": key,
        # ScheduleAnyway: a cluster with one zone (or few nodes) must still scale up.
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": naming.selector_labels(policy_name)},
        # Spread each ReplicaSet on its own, so a rollout does not skew the new pods.
        "matchLabelKeys": ["pod-template-hash"],
    }


def suppression_key_secret(owner: dict[str, Any], store: dict[str, Any] | None) -> str | None:
    """The fingerprint-key Secret of the store `spec.unsubscribeStoreRef` names: the store's
    `spec.fingerprintKey.secretName` or `<store>-fingerprint-key`, and the latter while the
    store does not exist (the Secret outlives its store, so a store coming and going never
    rolls the filter pods). None without a reference."""
    ref = owner["spec"].get("unsubscribeStoreRef")
    if not ref:
        return None
    if store is not None:
        return store_naming.fingerprint_key_secret(store)
    return store_naming.default_fingerprint_key_secret(ref["name"])


def render_deployment(owner: dict[str, Any], policy_hash: str,
                      settings: RenderSettings, store_client_secret: str | None = None,
                      *, shadow_hash: str | None = None,
                      learn_token_version: str | None = None,
                      key: SuppressionKey | None = None) -> dict[str, Any]:
    """The filter Deployment serving `policy_hash`; with `shadow_hash`, its pods also
    evaluate that policy in shadow (rollout.strategy Shadow). `store_client_secret`: see
    store_client_tls_secret (None: plaintext to the store). `learn_token_version`: the
    resourceVersion of the Learn admin-token Secret (learning.prepare; None: Learn off).
    `key`: the store's fingerprint key (SpamPolicy reconciler, `_suppression_key`)."""
    deployment = _render_deployment(owner, policy_hash, settings, store_client_secret, key)
    if learn_token_version is not None:
        learning.add_to_pod(deployment["spec"]["template"], owner, learn_token_version)
    if shadow_hash is not None:
        _add_shadow(deployment, owner, shadow_hash)
    return deployment


def render_canary_deployment(owner: dict[str, Any], candidate_hash: str, stable_hash: str,
                             replicas: int, settings: RenderSettings,
                             store_client_secret: str | None = None,
                             learn_token_version: str | None = None,
                             key: SuppressionKey | None = None) -> dict[str, Any]:
    """The canary Deployment (rollout.strategy Canary): pods like the main ones serving
    `candidate_hash`, which also judge a sample with `stable_hash` in shadow (the
    verdict-change guard). Its pods match the Services' selector, so they take a share of
    the traffic by pod count; its own selector adds the track label, so neither Deployment
    claims the other's pods. No autoscaler: the operator sets `replicas` at each step."""
    policy_name = owner["metadata"]["name"]
    deployment = render_deployment(owner, candidate_hash, settings, store_client_secret,
                                   shadow_hash=stable_hash,
                                   learn_token_version=learn_token_version, key=key)
    track = {naming.TRACK_LABEL: naming.CANARY_TRACK}
    deployment["metadata"] = naming.child_metadata(
        owner, naming.canary_name(policy_name), extra_labels=track,
        annotations={naming.HASH_ANNOTATION: candidate_hash})
    spec = deployment["spec"]
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": {**naming.selector_labels(policy_name), **track}}
    spec["template"]["metadata"]["labels"].update(track)
    return deployment


def _add_shadow(deployment: dict[str, Any], owner: dict[str, Any], shadow_hash: str) -> None:
    shadow = owner["spec"]["rollout"]["shadow"]
    template = deployment["spec"]["template"]
    template["metadata"]["annotations"][naming.SHADOW_HASH_ANNOTATION] = shadow_hash
    pod = template["spec"]
    container = pod["containers"][0]
    container["args"] += ["--shadow-policy-dir", naming.SHADOW_POLICY_MOUNT,
                          "--shadow-sample-rate", str(shadow["sampleRate"]),
                          "--shadow-cpu-fraction", str(shadow["cpuFraction"])]
    container["volumeMounts"].append({"name": "shadow-policy",
                                      "mountPath": naming.SHADOW_POLICY_MOUNT,
                                      "readOnly": True})
    pod["volumes"].append({"name": "shadow-policy", "configMap": {
        "name": naming.configmap_name(owner["metadata"]["name"], shadow_hash)}})


def _render_deployment(owner: dict[str, Any], policy_hash: str, settings: RenderSettings,
                       store_client_secret: str | None,
                       key: SuppressionKey | None) -> dict[str, Any]:
    spec = owner["spec"]
    policy_name = owner["metadata"]["name"]
    server = spec["server"]
    probe_port = naming.HEALTH_PORT if "tls" in spec else naming.GRPC_PORT
    container: dict[str, Any] = {
        "name": naming.CONTAINER_NAME,
        "image": spec.get("image") or settings.default_image,
        "imagePullPolicy": spec["imagePullPolicy"],
        "command": ["mailwarden"],
        "args": server_args(spec, suppression_store(owner),
                            store_tls=store_client_secret is not None,
                            key_file=key is not None and bool(suppression_store(owner))),
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            # The server sizes its budget for messages in flight from the memory limit, so
            # a burst of large messages is refused instead of OOM-killing the pod.
            {"name": wire.MEMORY_LIMIT_ENV,
             "valueFrom": {"resourceFieldRef": {"containerName": naming.CONTAINER_NAME,
                                                "resource": "limits.memory",
                                                "divisor": "1"}}},
        ],
        "ports": [
            {"name": "grpc", "containerPort": naming.GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": naming.METRICS_PORT, "protocol": "TCP"},
        ] + [{"name": protocol, "containerPort": naming.MAIL_PROTOCOLS[protocol][0],
              "protocol": "TCP"} for protocol in naming.mail_protocols(spec)],
        # Compiling a large policy can take a while: up to 2 minutes before liveness counts.
        "startupProbe": _grpc_probe(probe_port, period=2, failures=60),
        "readinessProbe": _grpc_probe(probe_port, period=2, failures=1),
        "livenessProbe": _grpc_probe(probe_port, period=10, failures=3),
        "lifecycle": {"preStop": {"sleep": {"seconds": server["preStopSeconds"]}}},
        "resources": spec.get("resources") or DEFAULT_RESOURCES,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "policy", "mountPath": naming.POLICY_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "policy", "configMap": {
            "name": naming.configmap_name(policy_name, policy_hash)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if bulk_gate_keys(spec):
        # The referenced store's signing-key Secret (current + previous after a rotation);
        # optional: a store not created yet must not keep the filter pods from starting
        # (tokens are then reported unchecked until the keys appear).
        ref = spec["unsubscribeStoreRef"]
        container["volumeMounts"].append(
            {"name": "signing-keys", "mountPath": naming.SIGNING_KEYS_MOUNT,
             "readOnly": True})
        volumes.append({"name": "signing-keys", "secret": {
            "secretName": ref.get("signingKeySecretName") or
            store_naming.default_signing_key_secret(ref["name"]),
            "defaultMode": 0o440, "optional": True}})
    if store_client_secret is not None and suppression_store(owner):
        # Optional: the pods start (and classify, reporting suppressions stale) before the
        # Secret exists; the suppression client reads the files at each reconnection.
        container["volumeMounts"].append(
            {"name": "suppression-tls", "mountPath": naming.SUPPRESSION_TLS_MOUNT,
             "readOnly": True})
        volumes.append({"name": "suppression-tls", "secret": {
            "secretName": store_client_secret, "defaultMode": 0o440, "optional": True}})
    template_annotations = {naming.HASH_ANNOTATION: policy_hash}
    if key is not None and suppression_store(owner):
        # Not optional: suppression_key() names it only once it exists.
        container["volumeMounts"].append(
            {"name": "suppression-key", "mountPath": naming.SUPPRESSION_KEY_MOUNT,
             "readOnly": True})
        volumes.append({"name": "suppression-key", "secret": {
            "secretName": key.secret, "defaultMode": 0o440,
            "items": [{"key": store_naming.FINGERPRINT_KEY_FILE,
                       "path": store_naming.FINGERPRINT_KEY_FILE}]}})
        template_annotations[naming.SUPPRESSION_KEY_ANNOTATION] = key.version
    if suppression_store(owner):
        # No size limit: the index grows with the store (its pages count against the
        # pod's memory limit as page cache).
        container["volumeMounts"].append(
            {"name": "suppression-index", "mountPath": naming.SUPPRESSION_INDEX_MOUNT})
        volumes.append({"name": "suppression-index", "emptyDir": {}})
    if "tls" in spec:
        container["ports"].append(
            {"name": "health", "containerPort": naming.HEALTH_PORT, "protocol": "TCP"})
        container["volumeMounts"].append(
            {"name": "tls", "mountPath": naming.TLS_MOUNT, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": spec["tls"]["secretName"]}})
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        # The filter never calls the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": [
            _spread(policy_name, "topology.kubernetes.io/zone"),
            _spread(policy_name, "kubernetes.io/hostname"),
        ],
    }
    scheduling = spec.get("scheduling") or {}
    for field in ("nodeSelector", "priorityClassName"):
        if field in scheduling:
            pod_spec[field] = scheduling[field]
    pod_spec["tolerations"] = pod_tolerations(scheduling.get("tolerations"))
    pod_spec.update(pod_identity(spec))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": naming.child_metadata(owner, naming.workload_name(policy_name),
                                          annotations={naming.HASH_ANNOTATION: policy_hash}),
        "spec": {
            # Only used on creation: afterwards the HPA owns the count (see apply.py).
            "replicas": spec["replicas"]["min"],
            "selector": {"matchLabels": naming.selector_labels(policy_name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                "maxUnavailable": 0, "maxSurge": spec["rollout"]["maxSurge"]}},
            "minReadySeconds": 5,
            "progressDeadlineSeconds": 600,
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {
                    "labels": naming.common_labels(policy_name),
                    # The hash in the template is what makes a policy change a rollout.
                    "annotations": template_annotations,
                },
                "spec": pod_spec,
            },
        },
    }
