"""One reconcile of one SpamPolicy: read → render → apply → report.

Idempotent: with nothing changed it sends no write at all (children compare equal, status
compares equal, Events are only posted on condition transitions).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mailwarden_operator.common import events, metrics
from mailwarden_operator.common.apply import Applier, ensure_exists
from mailwarden_operator.common.backoff import ApplyBackoff, ApplyFailure, is_persistent
from mailwarden_operator.common.kube import (
    CONFIGMAPS,
    DEPLOYMENTS,
    HPAS,
    PDBS,
    SECRETS,
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
from mailwarden_operator.common.status import build_conditions, observe_rollout, status_patch
from mailwarden_operator.spampolicy import (
    canary,
    canary_guards,
    learning,
    naming,
    shadow_agreement,
    suppression_health,
)
from mailwarden_operator.spampolicy.golden import CorpusVolume, check_golden
from mailwarden_operator.spampolicy.policy import PolicyBundle, PolicyRejected, build_bundle
from mailwarden_operator.spampolicy.render.configmap import render_configmap
from mailwarden_operator.spampolicy.render.deployment import (
    SuppressionKey,
    render_canary_deployment,
    render_deployment,
    store_client_tls_secret,
    suppression_key_secret,
    suppression_store,
)
from mailwarden_operator.spampolicy.render.hpa import render_hpa
from mailwarden_operator.spampolicy.render.pdb import render_pdb
from mailwarden_operator.spampolicy.render.servicemonitor import render_servicemonitor
from mailwarden_operator.spampolicy.render.services import render_headless_service, render_service
from mailwarden_operator.spampolicy.spec import serving_errors, with_defaults
from mailwarden_operator.spampolicy.status import Observation, compute_status
from mailwarden_operator.unsubscribestore.reconcile import (
    StoreProblem,
    check_fingerprint_key_secret,
)
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
    # Where the golden-corpus volume is mounted (goldenCorpus.directories), or None.
    golden_corpus_dir: Path | None = None
    # Reads a filter pod's /metrics (canary guards); tests put a stand-in here.
    metrics_fetch: Callable[[str], str] = suppression_health._fetch

    def __post_init__(self) -> None:
        self.applier = Applier(self.kube)
        # (namespace, name) of the policies with a canary in progress, as last reconciled:
        # what the resync thread re-checks between resyncs without listing anything.
        self._canaries: set[tuple[str, str]] = set()
        self._canaries_lock = threading.Lock()

    def canaries(self) -> list[tuple[str, str]]:
        """The policies with a canary in progress (as of their last reconcile here)."""
        with self._canaries_lock:
            return sorted(self._canaries)

    def _note_canary(self, namespace: str, name: str, running: bool) -> None:
        with self._canaries_lock:
            if running:
                self._canaries.add((namespace, name))
            else:
                self._canaries.discard((namespace, name))

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
        self._note_canary(namespace, name, False)
        self._locks.forget(namespace, name)
        metrics.forget(namespace, name)
        self.backoff.forget(namespace, name)
        for res, child in ((DEPLOYMENTS, naming.workload_name(name)),
                           (DEPLOYMENTS, naming.canary_name(name)),
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
        if seen_deployment is not None and \
                seen_deployment["metadata"].get("name") != naming.workload_name(name):
            seen_deployment = None  # the canary's: read the main one

        bundle: PolicyBundle | None = None
        rejected: PolicyRejected | None = None
        learn_token: str | None = None
        try:
            problems = serving_errors(spec, name)
            if problems:
                raise PolicyRejected("InvalidSpec", problems)
            def read_configmap(configmap: str) -> dict[str, Any] | None:
                return kube.get(CONFIGMAPS, namespace, configmap)

            candidate = build_bundle(spec.get("policy"), read_configmap)
            # The webhook refuses a change that breaks the golden corpus; this keeps such a
            # change from serving when no webhook is installed (or it admitted on failure).
            check_golden(spec, candidate, read_configmap,
                         volume=CorpusVolume(self.golden_corpus_dir, namespace))
            learn_token = learning.prepare(kube, owner)
            bundle = candidate
        except PolicyRejected as exc:
            rejected = exc

        store_target = suppression_store(owner)
        # Read once: its spec.tls decides how the filter pods connect, its status the
        # SuppressionReady condition.
        store = (kube.cached_get if cached_store else kube.get)(
            UNSUBSCRIBESTORES, namespace,
            spec["unsubscribeStoreRef"]["name"]) if store_target else None
        key = self._suppression_key(owner, store)
        workload = naming.workload_name(name)
        generation = owner["metadata"].get("generation")
        deployment: dict[str, Any] | None = None
        hpa: dict[str, Any] | None = None
        failure: ApplyFailure | None = None
        target_hash: str | None = None
        serving_hash, shadow_hash = None, None
        plan: canary.Plan | None = None
        now = self.clock()
        if bundle is not None:
            if spec["rollout"]["strategy"] == "Canary":
                plan = self._canary_plan(owner, bundle, seen_deployment, previous, now)
                serving_hash = plan.serving_hash
            else:
                serving_hash, shadow_hash = self._shadowing(owner, bundle, seen_deployment)
            failure = self.backoff.paused(namespace, name, generation)
            if failure is None:
                # After a refusal only a write of every child can tell it is over: a
                # Deployment event's shortcut (the Deployment alone) would clear the
                # condition and the next full attempt set it again, an Event each time.
                seen = seen_deployment if self.backoff.last_failure(namespace, name) is None \
                    else None
                try:
                    deployment, hpa = self._apply_children(
                        owner, bundle, seen, serving_hash, shadow_hash,
                        store_client_tls_secret(owner, store), learn_token, key)
                    self._apply_canary(owner, plan, serving_hash,
                                       store_client_tls_secret(owner, store),
                                       bool(previous.get("canary")), learn_token, key)
                    target_hash = serving_hash
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
            # leave every child as it is and report what is live. Except a canary that must
            # stop: rolled back (a rollback never waits for the other children), or no
            # longer what the spec asks for (an invalid spec: it could not be judged).
            if plan is not None and plan.running and plan.canary_hash is None \
                    and not plan.keep_canary:
                self._retire_canary(owner)
            elif bundle is None and spec["rollout"]["strategy"] == "Canary" \
                    and previous.get("canary"):
                self._retire_canary(owner)
            deployment = deployment or kube.get(DEPLOYMENTS, namespace, workload)
            target_hash = _template_hash(deployment)

        rollout = observe_rollout(deployment, target_hash, naming.HASH_ANNOTATION)
        if plan is not None and plan.keep_canary and rollout.complete \
                and target_hash == plan.serving_hash:
            # Promoted and live on every main pod: the canary pods are no longer needed.
            self._retire_canary(owner)
            plan.canary = None
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
        status, transitions = compute_status(previous, observation, now)
        self._canary_status(status, previous, plan, spec, observation.generation, now)
        if target_hash is not None:
            status["policyConfigMap"] = naming.configmap_name(name, target_hash)
        if shadow_hash is not None and target_hash == serving_hash:
            status["shadowPolicyHash"] = shadow_hash
            summarized = (previous.get("shadow") or {}).get("policyHash")
            if seen_deployment is None or summarized != shadow_hash:
                # Not at every Deployment event (several per pod start): at creates,
                # updates, promotions, every resync, and a new candidate's first event.
                status["shadow"] = shadow_agreement.observe(kube, owner, shadow_hash)
        elif previous.get("shadowPolicyHash") and bundle is not None:
            status["shadowPolicyHash"] = None  # promoted or withdrawn: drop the fields
            status["shadow"] = None

        if rollout.complete and target_hash is not None:
            self._prune(owner, status.get("recentPolicyHashes") or [], target_hash,
                        also_keep=shadow_hash or (plan.canary_hash if plan else None))

        self._note_canary(namespace, name, bool(status.get("canary", previous.get("canary"))))
        patch = status_patch(previous, status)
        if patch:
            kube.merge_patch(SPAMPOLICIES, namespace, name, {"status": patch},
                             subresource="status")
        for transition in transitions:
            events.post(kube, owner, naming.KIND, transition.type, transition.reason,
                        transition.message, now)
        if "shadowPolicyHash" in patch:
            self._shadow_event(owner, previous.get("shadowPolicyHash"),
                               patch["shadowPolicyHash"], target_hash, now)
        for kind, reason, message in (plan.events if plan else ()):
            events.post(kube, owner, naming.KIND, kind, reason, message, now)
        self._record(namespace, name, previous, status, bundle is not None)
        if rejected is not None:
            return "rejected"
        return "changed" if patch else "unchanged"

    def _shadowing(self, owner: dict[str, Any], bundle: PolicyBundle,
                   seen_deployment: dict[str, Any] | None) -> tuple[str, str | None]:
        """(the hash the pods serve, the hash they evaluate in shadow or None). With
        rollout.strategy Shadow a new valid policy is only shadowed while the pods keep
        serving the one they run, until it is promoted (the annotation naming its hash, or
        the strategy set back to RollingUpdate). Nothing runs yet: nothing to shadow."""
        if owner["spec"]["rollout"]["strategy"] != "Shadow":
            return bundle.hash, None
        meta = owner["metadata"]
        current = seen_deployment if seen_deployment is not None else self.kube.get(
            DEPLOYMENTS, meta["namespace"], naming.workload_name(meta["name"]))
        live = _template_hash(current)
        promoted = (meta.get("annotations") or {}).get(naming.PROMOTE_ANNOTATION)
        if live is None or live == bundle.hash or promoted == bundle.hash:
            return bundle.hash, None
        return live, bundle.hash

    def _canary_plan(self, owner: dict[str, Any], bundle: PolicyBundle,
                     seen_deployment: dict[str, Any] | None, previous: dict[str, Any],
                     now: datetime.datetime) -> canary.Plan:
        """rollout.strategy Canary: what the two Deployments should run (canary.py)."""
        meta = owner["metadata"]
        main = seen_deployment if seen_deployment is not None else self.kube.get(
            DEPLOYMENTS, meta["namespace"], naming.workload_name(meta["name"]))
        current = self.kube.get(DEPLOYMENTS, meta["namespace"],
                                naming.canary_name(meta["name"]))
        replicas = int(((main or {}).get("spec") or {}).get(
            "replicas", owner["spec"]["replicas"]["min"]))
        plan = canary.decide(owner["spec"], bundle.hash, _template_hash(main), replicas,
                             current, previous, now,
                             lambda candidate, stable: canary_guards.observe(
                                 self.kube, owner, candidate, stable,
                                 fetch=self.metrics_fetch))
        plan.running = bool(((current or {}).get("spec") or {}).get("replicas"))
        return plan

    def _suppression_key(self, owner: dict[str, Any],
                         store: dict[str, Any] | None) -> SuppressionKey | None:
        """The store's fingerprint key as the filter pods are to mount it, or None (each
        pod then makes its own key: a Watch snapshot at start, no forgotten suppressions).

        From the store's status, which names the Secret (and its resourceVersion) only once
        the store's reconciler has created or checked it: a pod mounting a missing Secret
        would wait in ContainerCreating, one with a bad key would exit, instead of
        classifying. So a no-op resync still sends no request. While the store does not
        exist, its default-named Secret is read (the Secret outlives the store, so a store
        coming and going does not roll the pods); its content never leaves this method."""
        if store is not None:
            status = store.get("status") or {}
            name, version = status.get("fingerprintKeySecret"), status.get(
                "fingerprintKeyVersion")
            if not name or version is None or name != suppression_key_secret(owner, store):
                return None
            return SuppressionKey(name, version)
        name = suppression_key_secret(owner, None)
        if name is None:
            return None
        secret = self.kube.get(SECRETS, owner["metadata"]["namespace"], name)
        if secret is None:
            return None
        try:
            check_fingerprint_key_secret(secret)
        except StoreProblem:
            return None
        return SuppressionKey(name, secret["metadata"].get("resourceVersion", ""))

    def _apply_canary(self, owner: dict[str, Any], plan: canary.Plan | None,
                      stable_hash: str | None, store_client_secret: str | None,
                      was_running: bool, learn_token: str | None = None,
                      key: SuppressionKey | None = None) -> None:
        """Run, resize or retire the canary Deployment as the plan says (no plan: the
        strategy is not Canary, so a canary in progress is retired). Policies that never
        ran one pay no request for it."""
        if plan is None:
            if was_running:
                self._retire_canary(owner)
            return
        if plan.keep_canary:
            return
        if plan.canary_hash is None or stable_hash is None:
            if plan.running:
                self._retire_canary(owner)
            return
        self.applier.apply(DEPLOYMENTS, render_canary_deployment(
            owner, plan.canary_hash, stable_hash, plan.canary_replicas, self.settings,
            store_client_secret, learn_token, key), create_only=())

    def _retire_canary(self, owner: dict[str, Any]) -> None:
        """Scale the canary Deployment to 0 (its pods drain as in any scale-down). Not a
        delete: the operator's Role has no delete on Deployments (least privilege), and the
        next canary reuses the object. It goes with the SpamPolicy (owner reference)."""
        meta = owner["metadata"]
        name = naming.canary_name(meta["name"])
        current = self.kube.get(DEPLOYMENTS, meta["namespace"], name)
        if current is None or not (current.get("spec") or {}).get("replicas"):
            return
        self.kube.merge_patch(DEPLOYMENTS, meta["namespace"], name, {"spec": {"replicas": 0}})
        self.applier.forget(DEPLOYMENTS.kind, meta["namespace"], name)
        log.info("scaled canary Deployment %s/%s to 0", meta["namespace"], name)

    def _canary_status(self, status: dict[str, Any], previous: dict[str, Any],
                       plan: canary.Plan | None, spec: dict[str, Any],
                       generation: int | None, now: datetime.datetime) -> None:
        """status.canary, status.lastRollback and the CanaryRolledBack condition (its
        Events are posted from the plan: one per start, step, promotion, rollback)."""
        if plan is None:
            if spec["rollout"]["strategy"] != "Canary":
                if previous.get("canary"):
                    status["canary"] = None  # the strategy changed: the canary was deleted
            else:
                # An invalid spec: a canary in progress was retired above (the spec no
                # longer asks for it); a rollback's condition stays.
                if previous.get("canary"):
                    status["canary"] = None
                status["conditions"] += [c for c in previous.get("conditions") or []
                                         if c.get("type") == canary.CONDITION
                                         and c.get("reason") == "GuardCrossed"]
            return
        status["canary"] = plan.canary
        if plan.last_rollback is not None:
            status["lastRollback"] = plan.last_rollback
        if plan.condition is not None:
            conditions, _ = build_conditions(previous, [plan.condition], generation, now,
                                             lambda *_: False)
            status["conditions"] += conditions

    def _apply_children(self, owner: dict[str, Any], bundle: PolicyBundle,
                        seen_deployment: dict[str, Any] | None = None,
                        serving_hash: str | None = None, shadow_hash: str | None = None,
                        store_client_secret: str | None = None,
                        learn_token: str | None = None,
                        key: SuppressionKey | None = None
                        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Write every child (nothing when all are as desired); returns the Deployment and
        the HorizontalPodAutoscaler (with their status; None when not read). The pods serve
        `serving_hash` (default: the bundle's) and shadow `shadow_hash` (the bundle)."""
        apply = self.applier.apply
        serving_hash = serving_hash or bundle.hash
        wanted = render_deployment(owner, serving_hash, self.settings, store_client_secret,
                                   shadow_hash=shadow_hash, learn_token_version=learn_token,
                                   key=key)
        if seen_deployment is not None and _template_hash(seen_deployment) == serving_hash \
                and _shadow_hash(seen_deployment) == shadow_hash:
            # A Deployment event for the current policy: its ConfigMap exists (it was
            # created before the Deployment pointed at it), other children are unchanged.
            _, deployment = apply(DEPLOYMENTS, wanted, seen=seen_deployment)
            return deployment, None
        ensure_exists(self.kube, CONFIGMAPS, render_configmap(owner, bundle))
        _, deployment = apply(DEPLOYMENTS, wanted)
        apply(SERVICES, render_service(owner))
        apply(SERVICES, render_headless_service(owner))
        _, hpa = apply(HPAS, render_hpa(owner, self._custom_metrics(owner)))
        apply(PDBS, render_pdb(owner))
        self._servicemonitor(owner)
        return deployment, hpa

    def _shadow_event(self, owner: dict[str, Any], before: str | None, after: str | None,
                      serving: str | None, now: datetime.datetime) -> None:
        """A Normal Event when a candidate starts being shadowed or stops (promoted or
        withdrawn), so `kubectl describe` tells the story next to the other rollouts."""
        if after:
            reason, message = "ShadowStarted", (
                f"policy {after} is evaluated in shadow while {serving} serves; promote it "
                f"with the annotation {naming.PROMOTE_ANNOTATION}={after}")
        elif before and serving == before:
            reason, message = "ShadowPromoted", f"policy {before} was promoted and rolls out"
        elif before:
            reason, message = "ShadowEnded", (f"policy {before} is no longer shadowed "
                                              f"({serving} serves)")
        else:
            return
        events.post(self.kube, owner, naming.KIND, "Normal", reason, message, now)

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

    def _prune(self, owner: dict[str, Any], recent: list[str], live_hash: str,
               also_keep: str | None = None) -> None:
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
        keep = {naming.configmap_name(meta["name"], h) for h in (live_hash, also_keep) if h}
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


def _shadow_hash(deployment: dict[str, Any] | None) -> str | None:
    annotations = ((deployment or {}).get("spec", {}).get("template", {}).get("metadata", {})
                   .get("annotations") or {})
    return annotations.get(naming.SHADOW_HASH_ANNOTATION)


def _invert(text: str) -> str:
    # Sort key for "newest first" on RFC 3339 timestamps with an ascending sort.
    return "".join(chr(0x10FFFF - ord(c)) for c in text)
