"""One reconcile of one SpamPolicy: read → render → apply → report.

Idempotent: with nothing changed it sends no write at all (children compare equal, status
compares equal, Events are only posted on condition transitions).
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mailwarden_operator.common import events, metrics
from mailwarden_operator.common.apply import Applier, ensure_exists
from mailwarden_operator.common.backoff import ApplyBackoff, ApplyFailure, is_persistent
from mailwarden_operator.common.kube import (
    CONFIGMAPS,
    DEPLOYMENTS,
    HPAS,
    PDBS,
    SERVICEMONITORS,
    SERVICES,
    SPAMPOLICIES,
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
from mailwarden_operator.spampolicy import naming, suppression_health
from mailwarden_operator.spampolicy.policy import PolicyBundle, PolicyRejected, build_bundle
from mailwarden_operator.spampolicy.render.configmap import render_configmap
from mailwarden_operator.spampolicy.render.deployment import (
    render_deployment,
    store_client_tls_secret,
    suppression_store,
)
from mailwarden_operator.spampolicy.render.hpa import render_hpa
from mailwarden_operator.spampolicy.render.pdb import render_pdb
from mailwarden_operator.spampolicy.render.servicemonitor import render_servicemonitor
from mailwarden_operator.spampolicy.render.services import render_headless_service, render_service
from mailwarden_operator.spampolicy.spec import serving_errors, with_defaults
from mailwarden_operator.spampolicy.status import Observation, compute_status
from mailwarden_operator.unsubscribestore.status import is_ready, ready_message

log = logging.getLogger("mailwarden.operator")

DEFAULT_KEEP_CONFIGMAPS = 3
CUSTOM_METRICS_GROUP = "custom.metrics.k8s.io"
CUSTOM_METRICS_VERSIONS = ("v1beta2", "v1beta1")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# Where the owner (and the referenced store) may come from the watch-fed cache
# (common/informer.py). Not for the policy's own create/update/resume events: kopf's watch
# delivered them and may be ahead of the cache's, and acting on an older spec would undo
# the change until the next resync. Nor the store after a store event, for the same reason.
CACHED_OWNER_TRIGGERS = frozenset({"resync", "deployment", "store"})
CACHED_STORE_TRIGGERS = frozenset({"resync", "deployment"})


@dataclass
class Reconciler:
    kube: Kube
    settings: RenderSettings = field(default_factory=RenderSettings)
    keep_configmaps: int = DEFAULT_KEEP_CONFIGMAPS
    clock: Callable[[], datetime.datetime] = _utcnow
    _locks: ObjectLocks = field(default_factory=ObjectLocks)
    applier: Applier = field(init=False)
    backoff: ApplyBackoff = field(default_factory=ApplyBackoff)

    def __post_init__(self) -> None:
        self.applier = Applier(self.kube)

    def reconcile(self, namespace: str, name: str, *, trigger: str = "event",
                  deployment: dict[str, Any] | None = None) -> str:
        """Reconcile one SpamPolicy; returns a one-word outcome for logs and metrics.

        `deployment`: the policy's Deployment as a watch event delivered it. Such an event
        (rollout progress, several per pod start) can only mean the Deployment changed:
        only it is checked, from that body, without reading the other children (the
        create/update handlers and the resync do that)."""
        started = time.perf_counter()
        result = "error"
        try:
            with self._locks.of(namespace, name):
                result = self._reconcile(namespace, name, deployment,
                                         cached_owner=trigger in CACHED_OWNER_TRIGGERS,
                                         cached_store=trigger in CACHED_STORE_TRIGGERS)
            return result
        finally:
            metrics.RECONCILES.labels(trigger, result).inc()
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def forget(self, namespace: str, name: str) -> None:
        self._locks.forget(namespace, name)
        metrics.forget(namespace, name)
        self.backoff.forget(namespace, name)
        for res, child in ((DEPLOYMENTS, naming.workload_name(name)),
                           (SERVICES, naming.workload_name(name)),
                           (SERVICES, naming.headless_name(name)),
                           (HPAS, naming.workload_name(name)), (PDBS, naming.workload_name(name)),
                           (SERVICEMONITORS, naming.workload_name(name))):
            self.applier.forget(res.kind, namespace, child)

    # -- the steps -------------------------------------------------------------------------

    def _reconcile(self, namespace: str, name: str,
                   seen_deployment: dict[str, Any] | None = None, *,
                   cached_owner: bool = False, cached_store: bool = False) -> str:
        kube = self.kube
        owner = (kube.cached_get if cached_owner else kube.get)(SPAMPOLICIES, namespace, name)
        if owner is None or owner["metadata"].get("deletionTimestamp"):
            return "gone"
        if not owner["metadata"].get("uid"):
            raise KubeError(0, f"SpamPolicy {namespace}/{name} has no metadata.uid")
        owner = {**owner, "spec": with_defaults(owner.get("spec"))}
        spec = owner["spec"]
        previous = owner.get("status") or {}

        bundle: PolicyBundle | None = None
        rejected: PolicyRejected | None = None
        try:
            problems = serving_errors(spec, name)
            if problems:
                raise PolicyRejected("InvalidSpec", problems)
            bundle = build_bundle(spec.get("policy"),
                                  lambda cm: kube.get(CONFIGMAPS, namespace, cm))
        except PolicyRejected as exc:
            rejected = exc

        store_target = suppression_store(owner)
        # Read once: its spec.tls decides how the filter pods connect, its status the
        # SuppressionReady condition.
        store = (kube.cached_get if cached_store else kube.get)(
            UNSUBSCRIBESTORES, namespace,
            spec["unsubscribeStoreRef"]["name"]) if store_target else None
        workload = naming.workload_name(name)
        generation = owner["metadata"].get("generation")
        deployment: dict[str, Any] | None = None
        hpa: dict[str, Any] | None = None
        failure: ApplyFailure | None = None
        target_hash: str | None = None
        if bundle is not None:
            failure = self.backoff.paused(namespace, name, generation)
            if failure is None:
                try:
                    deployment, hpa = self._apply_children(
                        owner, bundle, seen_deployment, store_client_tls_secret(owner, store))
                    target_hash = bundle.hash
                    self.backoff.succeeded(namespace, name)
                except KubeError as exc:
                    if not is_persistent(exc):
                        raise
                    failure = ApplyFailure.of(exc)
                    pause = self.backoff.failed(namespace, name, generation, failure)
                    log.warning("SpamPolicy %s/%s: the API server refused a child (%s); "
                                "next attempt in %.0f s or at a spec change", namespace,
                                name, failure.message, pause)
        if target_hash is None:
            # An invalid policy never reaches a pod, and a refused write changed nothing:
            # leave every child as it is and report what is live.
            deployment = deployment or kube.get(DEPLOYMENTS, namespace, workload)
            target_hash = _template_hash(deployment)

        rollout = observe_rollout(deployment, target_hash, naming.HASH_ANNOTATION)
        autoscaler = hpa if hpa is not None else kube.get(HPAS, namespace, workload)
        observation = Observation(
            generation=owner["metadata"].get("generation"),
            min_replicas=spec["replicas"]["min"],
            bundle_hash=bundle.hash if bundle else None,
            rule_count=bundle.rule_count() if bundle else 0,
            rejection_reason=rejected.reason if rejected else None,
            rejection_message=rejected.summary() if rejected else None,
            rollout=rollout,
            suppression=self._suppression(owner, store_target, store)
            if store_target else None,
            suppression_store=store_target,
            suppression_fresh=suppression_health.observe(kube, owner),
            apply_failure=failure,
            autoscaler=autoscaler,
            requests_per_second_ignored=bool(
                spec["autoscaling"].get("requestsPerSecond") and autoscaler is not None
                and len(autoscaler["spec"]["metrics"]) == 1))
        now = self.clock()
        status, transitions = compute_status(previous, observation, now)
        if target_hash is not None:
            status["policyConfigMap"] = naming.configmap_name(name, target_hash)

        if rollout.complete and target_hash is not None:
            self._prune(owner, status.get("recentPolicyHashes") or [], target_hash)

        patch = status_patch(previous, status)
        if patch:
            kube.merge_patch(SPAMPOLICIES, namespace, name, {"status": patch},
                             subresource="status")
        for transition in transitions:
            events.post(kube, owner, naming.KIND, transition.type, transition.reason,
                        transition.message, now)
        self._record(namespace, name, previous, status, bundle is not None)
        if rejected is not None:
            return "rejected"
        return "changed" if patch else "unchanged"

    def _apply_children(self, owner: dict[str, Any], bundle: PolicyBundle,
                        seen_deployment: dict[str, Any] | None = None,
                        store_client_secret: str | None = None
                        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Write every child (nothing when all are as desired); returns the Deployment and
        the HorizontalPodAutoscaler (with their status; None when not read)."""
        apply = self.applier.apply
        if seen_deployment is not None and _template_hash(seen_deployment) == bundle.hash:
            # A Deployment event for the current policy: its ConfigMap exists (it was
            # created before the Deployment pointed at it), other children are unchanged.
            _, deployment = apply(DEPLOYMENTS,
                                  render_deployment(owner, bundle.hash, self.settings,
                                                    store_client_secret),
                                  seen=seen_deployment)
            return deployment, None
        ensure_exists(self.kube, CONFIGMAPS, render_configmap(owner, bundle))
        _, deployment = apply(DEPLOYMENTS, render_deployment(owner, bundle.hash, self.settings,
                                                    store_client_secret))
        apply(SERVICES, render_service(owner))
        apply(SERVICES, render_headless_service(owner))
        _, hpa = apply(HPAS, render_hpa(owner, self._custom_metrics(owner)))
        apply(PDBS, render_pdb(owner))
        self._servicemonitor(owner)
        return deployment, hpa

    def _custom_metrics(self, owner: dict[str, Any]) -> bool:
        """Whether the requests/s target can be read (asked only when one is set)."""
        if not owner["spec"]["autoscaling"].get("requestsPerSecond"):
            return True
        return any(self.kube.api_available(CUSTOM_METRICS_GROUP, version)
                   for version in CUSTOM_METRICS_VERSIONS)

    def reconcile_referencing(self, namespace: str, store: str, *,
                              trigger: str = "store") -> None:
        """Reconcile the SpamPolicies of `namespace` that reference UnsubscribeStore `store`
        (their SuppressionReady condition follows the store's readiness)."""
        for body in self.kube.list(SPAMPOLICIES, namespace):
            ref = (body.get("spec") or {}).get("unsubscribeStoreRef") or {}
            if ref.get("name") == store:
                try:
                    self.reconcile(namespace, body["metadata"]["name"], trigger=trigger)
                except KubeError as exc:
                    log.warning("updating SpamPolicy %s/%s after a change of store %s "
                                "failed: %s", namespace, body["metadata"]["name"], store, exc)

    def _suppression(self, owner: dict[str, Any], target: str,
                     body: dict[str, Any] | None) -> tuple[str, str, str, str]:
        """The SuppressionReady condition from the store's body (None: not found).
        Informational only: classification goes on without suppressions (and the filter
        pods reconnect) whatever it says."""
        store = owner["spec"]["unsubscribeStoreRef"]["name"]
        if body is None:
            return ("SuppressionReady", "False", "StoreNotFound",
                    f"UnsubscribeStore {store} not found: the filter pods classify without "
                    f"suppressions until it serves at {target}")
        if not is_ready(body.get("status")):
            return ("SuppressionReady", "False", "StoreNotReady",
                    f"UnsubscribeStore {store} is not Ready ({ready_message(body.get('status'))})"
                    "; the filter pods classify with the suppressions they last received")
        return ("SuppressionReady", "True", "StoreReady",
                f"the filter pods follow UnsubscribeStore {store} at {target}")

    def _servicemonitor(self, owner: dict[str, Any]) -> None:
        if not self.kube.api_available(MONITORING_GROUP, MONITORING_VERSION):
            return
        meta = owner["metadata"]
        if servicemonitor_wanted(owner):
            self.applier.apply(SERVICEMONITORS, render_servicemonitor(owner))
        elif self.kube.get(SERVICEMONITORS, meta["namespace"],
                           naming.workload_name(meta["name"])) is not None:
            self.kube.delete(SERVICEMONITORS, meta["namespace"],
                             naming.workload_name(meta["name"]))

    def _prune(self, owner: dict[str, Any], recent: list[str], live_hash: str) -> None:
        """Delete policy ConfigMaps beyond the newest `keep_configmaps` (the live one is
        always kept). Runs only once a rollout is complete: no pod reads the old ones."""
        meta = owner["metadata"]
        configmaps = self.kube.list_metadata(CONFIGMAPS, meta["namespace"], {
            naming.POLICY_LABEL: meta["name"], naming.ROLE_LABEL: "policy"})
        order = {h: i for i, h in enumerate(recent)}

        def recency(cm: dict[str, Any]) -> tuple[int, str]:
            cm_hash = (cm["metadata"].get("labels") or {}).get(naming.HASH_LABEL, "")
            # Newest first: by rollout history, then by creation time (newest first).
            created = cm["metadata"].get("creationTimestamp") or ""
            return (order.get(cm_hash, len(order)), _invert(created))

        ordered = sorted(configmaps, key=recency)
        keep = {naming.configmap_name(meta["name"], live_hash)}
        for cm in ordered:
            if len(keep) >= self.keep_configmaps:
                break
            keep.add(cm["metadata"]["name"])
        for cm in ordered:
            if cm["metadata"]["name"] not in keep:
                self.kube.delete(CONFIGMAPS, meta["namespace"], cm["metadata"]["name"])
                metrics.PRUNED_CONFIGMAPS.inc()
                log.info("pruned old policy ConfigMap %s/%s", meta["namespace"],
                         cm["metadata"]["name"])

    def _record(self, namespace: str, name: str, previous: dict[str, Any],
                status: dict[str, Any], valid: bool) -> None:
        metrics.POLICY_VALID.labels(namespace, name).set(1 if valid else 0)
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in status["conditions"])
        metrics.POLICY_READY.labels(namespace, name).set(1 if ready else 0)
        metrics.set_conditions(namespace, name, status["conditions"])
        seconds = status.get("lastPropagationSeconds")
        if seconds is not None and status.get("policyHash") != previous.get("policyHash"):
            metrics.PROPAGATION_SECONDS.observe(seconds)
            log.info("policy %s of %s/%s live on every replica after %.1f s",
                     status.get("policyHash"), namespace, name, seconds)
        if seconds is not None:
            metrics.LAST_PROPAGATION_SECONDS.labels(namespace, name).set(seconds)


def _template_hash(deployment: dict[str, Any] | None) -> str | None:
    if deployment is None:
        return None
    annotations = (deployment.get("spec", {}).get("template", {}).get("metadata", {})
                   .get("annotations") or {})
    return annotations.get(naming.HASH_ANNOTATION)


def _invert(text: str) -> str:
    # Sort key for "newest first" on RFC 3339 timestamps with an ascending sort.
    return "".join(chr(0x10FFFF - ord(c)) for c in text)
