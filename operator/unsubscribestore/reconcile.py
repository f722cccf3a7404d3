"""One reconcile of one UnsubscribeStore: read → render → apply → report.

Same shape as the SpamPolicy's (`spampolicy/reconcile.py`): idempotent, nothing written when
nothing changed.
Three children are special:
- the signing-key and fingerprint-key Secrets are created only when absent (with a fresh
  random key) and never patched, so a second reconcile, another operator replica or a
  restart cannot replace a key whose tokens are in inboxes or under which forgotten
  suppressions are kept;
- the data claim of an embedded store is created once and never patched.
None carries an owner reference (they outlive the store, see docs/operator.md).

Secrets the store pods mount are read before anything is rendered: a missing one is a
configuration problem (reported in status, nothing applied, previous pods keep serving)
rather than a pod stuck in ContainerCreating. Their content never leaves this module —
only resourceVersions go into the pod template (so a rotation rolls the pods).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mailwarden.fingerprints import FingerprintKey, KeyUnusable
from mailwarden.tokens import SigningKey, SigningKeyError, generate_key, parse_previous_key_line
from mailwarden_operator.common import events, metrics
from mailwarden_operator.common.apply import Applier, ensure_exists
from mailwarden_operator.common.backoff import ApplyBackoff, ApplyFailure, is_persistent
from mailwarden_operator.common.kube import (
    DEPLOYMENTS,
    HPAS,
    NETWORKPOLICIES,
    PDBS,
    PVCS,
    SECRETS,
    SERVICEMONITORS,
    SERVICES,
    UNSUBSCRIBESTORES,
    Kube,
    KubeError,
)
from mailwarden_operator.common.locks import ObjectLocks
from mailwarden_operator.common.render import (
    MONITORING_GROUP,
    MONITORING_VERSION,
    RenderSettings,
    servicemonitor_wanted,
)
from mailwarden_operator.common.status import observe_rollout, status_patch
from mailwarden_operator.unsubscribestore import naming as store_naming
from mailwarden_operator.unsubscribestore.render.deployment import render_store_deployment
from mailwarden_operator.unsubscribestore.render.hpa import render_store_hpa
from mailwarden_operator.unsubscribestore.render.networkpolicy import (
    networkpolicy_wanted,
    render_store_networkpolicy,
)
from mailwarden_operator.unsubscribestore.render.pdb import render_store_pdb
from mailwarden_operator.unsubscribestore.render.pvc import render_data_claim, wants_claim
from mailwarden_operator.unsubscribestore.render.secret import (
    render_fingerprint_key_secret,
    render_signing_key_secret,
)
from mailwarden_operator.unsubscribestore.render.servicemonitor import render_store_servicemonitor
from mailwarden_operator.unsubscribestore.render.services import (
    render_grpc_service,
    render_http_service,
)
from mailwarden_operator.unsubscribestore.spec import spec_errors, with_defaults
from mailwarden_operator.unsubscribestore.status import (
    StoreObservation,
    compute_store_status,
    is_ready,
)

log = logging.getLogger("mailwarden.operator.store")


class StoreProblem(Exception):
    """A configuration problem that stops the rollout; `reason` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _secret_value(secret: dict[str, Any], key: str) -> bytes | None:
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None


def _required_value(secret: dict[str, Any], key: str, reason: str) -> bytes:
    value = _secret_value(secret, key)
    if value is None:
        raise StoreProblem(reason, f"Secret {secret['metadata']['name']} has no (base64) "
                                   f"key '{key}'")
    return value


def check_signing_key_secret(secret: dict[str, Any]) -> None:
    """Raise StoreProblem unless the server would accept the Secret as `--signing-key-dir`
    (the server's rule: one key per non-empty line, `current` exactly one, each key at least
    32 bytes, a `previous` key optionally followed by ` retired=YYYY-MM-DD`). Messages never
    contain key material."""
    name = secret["metadata"]["name"]
    current = _required_value(secret, store_naming.SIGNING_KEY_CURRENT, "SigningKeyInvalid")
    for key in (store_naming.SIGNING_KEY_CURRENT, store_naming.SIGNING_KEY_PREVIOUS):
        value = current if key == store_naming.SIGNING_KEY_CURRENT else \
            _secret_value(secret, key)
        if value is None:
            continue
        lines = [line.strip() for line in value.splitlines() if line.strip()]
        if key == store_naming.SIGNING_KEY_CURRENT and len(lines) != 1:
            raise StoreProblem("SigningKeyInvalid",
                               f"Secret {name}: '{key}' must hold exactly one key")
        for line in lines:
            try:
                if key == store_naming.SIGNING_KEY_PREVIOUS:  # `KEY [retired=YYYY-MM-DD]`
                    line = parse_previous_key_line(line, key)[0]
                SigningKey(line)
            except SigningKeyError as exc:
                raise StoreProblem("SigningKeyInvalid", f"Secret {name}, '{key}': {exc}") \
                    from None


def check_fingerprint_key_secret(secret: dict[str, Any]) -> None:
    """Raise StoreProblem unless the store and the filter pods would accept the Secret's
    `key` as their fingerprint key file (at least 32 bytes, raw or hex). Messages never
    contain key material."""
    name = secret["metadata"]["name"]
    value = _required_value(secret, store_naming.FINGERPRINT_KEY_FILE, "FingerprintKeyInvalid")
    try:
        FingerprintKey.from_content(value, f"'{store_naming.FINGERPRINT_KEY_FILE}'")
    except KeyUnusable as exc:
        raise StoreProblem("FingerprintKeyInvalid", f"Secret {name}: {exc}") from None


@dataclass
class StoreReconciler:
    kube: Kube
    settings: RenderSettings = field(default_factory=RenderSettings)
    clock: Callable[[], datetime.datetime] = _utcnow
    # Called (namespace, name) after a reconcile that changed whether the store is Ready,
    # so SpamPolicies referencing it update their SuppressionReady condition at once.
    on_ready_changed: Callable[[str, str], None] | None = None
    _locks: ObjectLocks = field(default_factory=ObjectLocks)
    applier: Applier = field(init=False)
    backoff: ApplyBackoff = field(default_factory=ApplyBackoff)

    def __post_init__(self) -> None:
        self.applier = Applier(self.kube)

    def reconcile(self, namespace: str, name: str, *, trigger: str = "event") -> str:
        """Reconcile one UnsubscribeStore; returns a one-word outcome."""
        started = time.perf_counter()
        result = "error"
        ready_changed = False
        try:
            with self._locks.of(namespace, name):
                result, ready_changed = self._reconcile(
                    namespace, name, cached_owner=trigger in ("resync", "deployment"))
        finally:
            metrics.STORE_RECONCILES.labels(trigger, result).inc()
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        if ready_changed and self.on_ready_changed is not None:
            self.on_ready_changed(namespace, name)
        return result

    def forget(self, namespace: str, name: str) -> None:
        self._locks.forget(namespace, name)
        metrics.forget_store(namespace, name)
        self.backoff.forget(namespace, name)
        workload = store_naming.workload_name(name)
        for res, child in ((DEPLOYMENTS, workload), (SERVICES, workload),
                           (SERVICES, store_naming.http_service_name(name)), (HPAS, workload),
                           (PDBS, workload), (SERVICEMONITORS, workload),
                           (NETWORKPOLICIES, workload)):
            self.applier.forget(res.kind, namespace, child)

    # -- the steps -------------------------------------------------------------------------

    def _reconcile(self, namespace: str, name: str, *,
                   cached_owner: bool = False) -> tuple[str, bool]:
        kube = self.kube
        # The watch-fed copy only where no event of the store itself triggered us (see
        # spampolicy/reconcile.py, CACHED_OWNER_TRIGGERS).
        owner = (kube.cached_get if cached_owner else kube.get)(UNSUBSCRIBESTORES,
                                                               namespace, name)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return "gone", False
        if not owner["metadata"].get("uid"):
            raise KubeError(0, f"UnsubscribeStore {namespace}/{name} has no metadata.uid")
        owner = {**owner, "spec": with_defaults(owner.get("spec"))}
        spec = owner["spec"]
        previous = owner.get("status") or {}
        now = self.clock()

        problem: StoreProblem | None = None
        failure: ApplyFailure | None = None
        generation = owner["metadata"].get("generation")
        errors = spec_errors(spec, name)
        if errors:
            problem = StoreProblem("InvalidSpec", "; ".join(errors))
        else:
            failure = self.backoff.paused(namespace, name, generation)

        workload = store_naming.workload_name(name)
        deployment: dict[str, Any] | None = None
        target_hash: str | None = None
        embedded = spec.get("storage", {}).get("type") == "embedded"
        # The fingerprint key as checked in this reconcile: {"key": (name, resourceVersion)},
        # {"key": None} when it is unusable, {} when not reached (status keeps what it said).
        fingerprint: dict[str, tuple[str, str] | None] = {}
        if problem is None and failure is None:
            try:
                deployment, target_hash = self._apply_children(owner, now, fingerprint)
                self.backoff.succeeded(namespace, name)
            except StoreProblem as exc:
                problem = exc
                if exc.reason == "FingerprintKeyInvalid":
                    fingerprint["key"] = None
            except KubeError as exc:
                if not is_persistent(exc):
                    raise
                failure = ApplyFailure.of(exc)
                pause = self.backoff.failed(namespace, name, generation, failure)
                log.warning("UnsubscribeStore %s/%s: the API server refused a child (%s); "
                            "next attempt in %.0f s or at a spec change", namespace, name,
                            failure.message, pause)
        if failure is not None and problem is None:
            problem = StoreProblem("ApplyFailed", f"the API server refused a child object: "
                                   f"{failure.message}")
        if target_hash is None:
            # Leave every child as it is: whatever served before keeps serving.
            deployment = kube.get(DEPLOYMENTS, namespace, workload)
            target_hash = ((deployment or {}).get("spec", {}).get("template", {})
                           .get("metadata", {}).get("annotations") or {}).get(
                               store_naming.CONFIG_HASH_ANNOTATION)

        rollout = observe_rollout(deployment, target_hash, store_naming.CONFIG_HASH_ANNOTATION)
        one_click = (spec.get("oneClick") or {}).get("enabled", True)
        endpoints = {
            "grpc": store_naming.grpc_target(name, namespace),
            "http": f"http://{store_naming.http_service_name(name)}.{namespace}.svc:"
                    f"{spec['http']['service']['port']}" if "http" in spec else "",
        }
        base_url = (spec.get("http") or {}).get("publicBaseURL")
        if base_url:
            endpoints["publicBaseURL"] = base_url
        storage = spec.get("storage") or {}
        observation = StoreObservation(
            generation=owner["metadata"].get("generation"),
            storage=storage.get("type", "unknown"),
            durability=spec.get("durability", "local"),
            min_replicas=1 if embedded else spec["replicas"]["min"],
            embedded_volume=(storage.get("embedded") or {}).get("volume"),
            problem_reason=problem.reason if problem else None,
            problem_message=problem.message if problem else None,
            deployment_exists=deployment is not None,
            rollout=rollout,
            rollout_stuck=_progress_deadline_exceeded(deployment),
            signing_key_secret=store_naming.signing_key_secret(owner) if one_click else None,
            fingerprint_key=fingerprint.get("key"), fingerprint_key_known="key" in fingerprint,
            endpoints=endpoints, apply_failure=failure)
        status, transitions = compute_store_status(previous, observation, now)
        patch = status_patch(previous, status)
        if patch:
            kube.merge_patch(UNSUBSCRIBESTORES, namespace, name, {"status": patch},
                             subresource="status")
        for transition in transitions:
            events.post(kube, owner, store_naming.KIND, transition.type, transition.reason,
                        transition.message, now)
        ready = is_ready(status)
        metrics.STORE_READY.labels(namespace, name).set(1 if ready else 0)
        ready_changed = is_ready(previous) != ready or not previous.get("conditions")
        if problem is not None:
            return "rejected", ready_changed
        return ("changed" if patch else "unchanged"), ready_changed

    def _apply_children(self, owner: dict[str, Any], now: datetime.datetime,
                        fingerprint: dict[str, tuple[str, str] | None]
                        ) -> tuple[dict[str, Any], str]:
        """Check the Secrets, then write every child (nothing when all are as desired);
        returns the Deployment and its config hash. Raises StoreProblem or KubeError."""
        kube = self.kube
        embedded = owner["spec"]["storage"]["type"] == "embedded"
        versions = self._secret_versions(owner, now)
        fingerprint["key"] = (store_naming.fingerprint_key_secret(owner),
                              versions["fingerprint-key"])
        if wants_claim(owner):
            ensure_exists(kube, PVCS, render_data_claim(owner))
        desired = render_store_deployment(owner, self.settings, versions)
        # Embedded: no autoscaler, and never a second SQLite writer: replicas enforced.
        apply = self.applier.apply
        _, deployment = apply(DEPLOYMENTS, desired, create_only=() if embedded else None)
        apply(SERVICES, render_grpc_service(owner))
        apply(SERVICES, render_http_service(owner))
        if not embedded:
            apply(HPAS, render_store_hpa(owner))
            apply(PDBS, render_store_pdb(owner))
        self._servicemonitor(owner)
        self._networkpolicy(owner)
        return deployment, desired["metadata"]["annotations"][
            store_naming.CONFIG_HASH_ANNOTATION]

    def _secret_versions(self, owner: dict[str, Any], now: datetime.datetime) -> dict[str, str]:
        """Check (and for the generated keys, create) the Secrets the pods mount; returns
        their resourceVersions by role. Raises StoreProblem."""
        spec = owner["spec"]
        namespace = owner["metadata"]["namespace"]
        versions: dict[str, str] = {}
        if spec["oneClick"]["enabled"]:
            name = store_naming.signing_key_secret(owner)
            versions["signing-key"] = self._generated_key_version(
                owner, now, name, lambda: render_signing_key_secret(owner, generate_key()),
                metrics.SIGNING_KEYS_GENERATED, "signing-key", "SigningKeyGenerated",
                f"generated a random signing key in Secret {name} (kept when the store is "
                "deleted; rotate by editing it)", check_signing_key_secret)
        name = store_naming.fingerprint_key_secret(owner)
        versions["fingerprint-key"] = self._generated_key_version(
            owner, now, name,
            lambda: render_fingerprint_key_secret(owner, secrets.token_hex(32)),
            metrics.FINGERPRINT_KEYS_GENERATED, "fingerprint-key", "FingerprintKeyGenerated",
            f"generated a random suppression fingerprint key in Secret {name} (kept when the "
            "store is deleted; see docs/unsubscribe.md before rotating it)",
            check_fingerprint_key_secret)
        if spec["storage"]["type"] == "postgres":
            ref = spec["storage"]["postgres"]["dsnSecretRef"]
            versions["dsn"] = self._secret_version(
                namespace, ref, "storage.postgres.dsnSecretRef", "DSNSecret")
        if "resubscribe" in spec:
            versions["resubscribe"] = self._secret_version(
                namespace, spec["resubscribe"]["secretRef"], "resubscribe.secretRef",
                "ResubscribeSecret")
        return versions

    def _generated_key_version(self, owner: dict[str, Any], now: datetime.datetime, name: str,
                               render: Callable[[], dict[str, Any]], generated: Any,
                               role: str, reason: str, message: str,
                               check: Callable[[dict[str, Any]], None]) -> str:
        """Create the key Secret `name` with `render()` when absent (never replace it), then
        `check` it; returns its resourceVersion. Raises StoreProblem."""
        kube = self.kube
        namespace = owner["metadata"]["namespace"]
        secret = kube.get(SECRETS, namespace, name)
        if secret is None:
            outcome, secret = ensure_exists(kube, SECRETS, render())
            if outcome == "created":
                generated.inc()
                log.info("generated the %s Secret %s/%s", role, namespace, name)
                events.post(kube, owner, store_naming.KIND, "Normal", reason, message, now)
        check(secret)
        return secret["metadata"].get("resourceVersion", "")

    def _secret_version(self, namespace: str, ref: dict[str, str], field_path: str,
                        reason_prefix: str) -> str:
        secret = self.kube.get(SECRETS, namespace, ref["name"])
        if secret is None:
            raise StoreProblem(f"{reason_prefix}NotFound",
                               f"Secret {ref['name']} ({field_path}) not found")
        value = _secret_value(secret, ref["key"])
        if not value or not value.strip():
            raise StoreProblem(f"{reason_prefix}KeyMissing",
                               f"Secret {ref['name']} ({field_path}) has no non-empty key "
                               f"'{ref['key']}'")
        return secret["metadata"].get("resourceVersion", "")

    def _networkpolicy(self, owner: dict[str, Any]) -> None:
        meta = owner["metadata"]
        if networkpolicy_wanted(owner):
            self.applier.apply(NETWORKPOLICIES, render_store_networkpolicy(owner))
        elif self.kube.get(NETWORKPOLICIES, meta["namespace"],
                           store_naming.workload_name(meta["name"])) is not None:
            self.kube.delete(NETWORKPOLICIES, meta["namespace"],
                             store_naming.workload_name(meta["name"]))

    def _servicemonitor(self, owner: dict[str, Any]) -> None:
        if not self.kube.api_available(MONITORING_GROUP, MONITORING_VERSION):
            return
        meta = owner["metadata"]
        name = store_naming.workload_name(meta["name"])
        if servicemonitor_wanted(owner):
            self.applier.apply(SERVICEMONITORS, render_store_servicemonitor(owner))
        elif self.kube.get(SERVICEMONITORS, meta["namespace"], name) is not None:
            self.kube.delete(SERVICEMONITORS, meta["namespace"], name)


def _progress_deadline_exceeded(deployment: dict[str, Any] | None) -> bool:
    for c in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return True
    return False
