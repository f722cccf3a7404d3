"""kopf registration: every handler only hands the object to a reconciler.

Triggers: create/update/resume of a SpamPolicy or an UnsubscribeStore, events of the
Deployments the operator manages (rollout progress → status), and the deletion of a store
(SpamPolicies referencing it update their SuppressionReady condition). The periodic resync is
`resync.py` (not a kopf timer: timers put finalizers on every object). The validating
webhook reuses the policy validator.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import kopf

from mailwarden_operator.common import metrics
from mailwarden_operator.common.backoff import retry_delay
from mailwarden_operator.common.kube import CONFIGMAPS, DEPLOYMENTS, USER_AGENT, KubeError
from mailwarden_operator.common.naming import GROUP, MANAGED_BY, VERSION
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.reconcile import Reconciler
from mailwarden_operator.spampolicy.webhook import (
    admission_errors,
    admission_message,
    golden_errors,
    golden_message,
    needs_review,
)
from mailwarden_operator.unsubscribestore import naming as store_naming
from mailwarden_operator.unsubscribestore.reconcile import StoreReconciler

WEBHOOK_ID = "validate-spampolicy"


@dataclasses.dataclass(frozen=True, kw_only=True)
class IdentifiedConnection(kopf.ConnectionInfo):
    """kopf's connection with our User-Agent: audit logs (and the field manager the API
    server derives for kopf's own patches) name the operator, not "kopf"."""

    def as_http_headers(self) -> dict[str, str]:
        return {**super().as_http_headers(), "User-Agent": USER_AGENT}


def build_registry(get_reconciler: Callable[[], Reconciler], *, webhook: bool,
                   get_store_reconciler: Callable[[], StoreReconciler] | None = None,
                   ) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, naming.PLURAL)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # The service account in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config).
        info = kopf.login_via_client(**kwargs)
        if info is None:
            return None
        return IdentifiedConnection(**{f.name: getattr(info, f.name)
                                       for f in dataclasses.fields(info)})

    def run(namespace: str, name: str, trigger: str, logger: Any, retry: int = 0,
            deployment: dict[str, Any] | None = None) -> None:
        try:
            outcome = get_reconciler().reconcile(namespace, name, trigger=trigger,
                                                 deployment=deployment)
        except KubeError as exc:
            # Transient (the API server unreachable, throttling, 5xx; refusals are reported
            # in status instead): retried by kopf, the delay doubling each time.
            raise kopf.TemporaryError(f"API call failed: {exc}",
                                      delay=retry_delay(retry)) from exc
        if outcome not in ("unchanged", "gone"):
            logger.debug("reconciled (%s): %s", trigger, outcome)

    @kopf.on.create(*resource, registry=registry)
    def spampolicy_created(namespace: str, name: str, logger: Any, retry: int,
                          **_: Any) -> None:
        run(namespace, name, "create", logger, retry)

    @kopf.on.update(*resource, registry=registry)
    def spampolicy_updated(namespace: str, name: str, logger: Any, retry: int,
                          **_: Any) -> None:
        run(namespace, name, "update", logger, retry)

    @kopf.on.resume(*resource, registry=registry)
    def spampolicy_resumed(namespace: str, name: str, logger: Any, retry: int,
                          **_: Any) -> None:
        run(namespace, name, "resume", logger, retry)

    # No finalizer (children go by owner references): a delete handler without one never
    # runs, so the watch event is what tells us to drop the policy's metrics and locks.
    @kopf.on.event(*resource, registry=registry)
    def spampolicy_event(namespace: str, name: str, type: str | None, body: Any,
                         logger: Any, **_: Any) -> None:
        if type == "DELETED":
            get_reconciler().forget(namespace, name)
        elif type == "MODIFIED" and promotes_shadow(body):
            # An annotation is no spec change (no update handler runs): promote now.
            try:
                run(namespace, name, "promote", logger)
            except kopf.TemporaryError as exc:
                logger.warning("promoting the shadow policy failed: %s", exc)

    @kopf.on.event("apps", "v1", "deployments", registry=registry,
                   labels={"app.kubernetes.io/managed-by": MANAGED_BY,
                           naming.POLICY_LABEL: kopf.PRESENT})
    def deployment_changed(namespace: str, labels: dict[str, str], type: str | None,
                           body: Any, logger: Any, **_: Any) -> None:
        if type is None:  # the initial listing: resume handlers cover those
            return
        get_reconciler().kube.observe(DEPLOYMENTS, dict(body), deleted=type == "DELETED")
        try:
            # The event carries the Deployment: no GET of it, nor of the other children
            # (a deleted one is recreated after a full read).
            run(namespace, labels[naming.POLICY_LABEL], "deployment", logger,
                deployment=None if type == "DELETED" else dict(body))
        except kopf.TemporaryError as exc:
            # Event handlers are not retried; the resync timer catches up.
            logger.warning("status update after a Deployment change failed: %s", exc)

    if get_store_reconciler is not None:
        _register_store(registry, get_reconciler, get_store_reconciler)

    if webhook:
        @kopf.on.validate(*resource, id=WEBHOOK_ID, registry=registry)
        def validate_spampolicy(spec: dict[str, Any], name: str | None,
                                namespace: str | None, operation: str | None, old: Any,
                                new: Any, request: Any = None, **_: Any) -> None:
            if not needs_review(operation, old, new):
                metrics.WEBHOOK_REVIEWS.labels("skipped").inc()
                return
            errors = admission_errors(dict(spec or {}), name or "")
            if not errors and (spec or {}).get("goldenCorpus"):
                kube = get_reconciler().kube
                # The API server fills the object's namespace in before admission; the
                # request names it too.
                namespace = namespace or ((request or {}).get("request") or {}).get(
                    "namespace") or ""
                golden = golden_errors(
                    dict(spec or {}), dict((old or {}).get("spec") or {}) or None,
                    lambda configmap: kube.get(CONFIGMAPS, namespace, configmap))
                if golden:
                    metrics.WEBHOOK_REVIEWS.labels("false").inc()
                    raise kopf.AdmissionError(golden_message(golden), code=422)
            metrics.WEBHOOK_REVIEWS.labels("false" if errors else "true").inc()
            if errors:
                raise kopf.AdmissionError(admission_message(errors), code=422)

    return registry


def promotes_shadow(body: Any) -> bool:
    """Whether the promote annotation names the candidate the pods shadow right now."""
    wanted = ((body.get("metadata") or {}).get("annotations") or {}).get(
        naming.PROMOTE_ANNOTATION)
    return bool(wanted) and wanted == (body.get("status") or {}).get("shadowPolicyHash")


def _store_tls(body: Any) -> Any:
    return ((body or {}).get("spec") or {}).get("tls")


def _register_store(registry: kopf.OperatorRegistry,
                    get_reconciler: Callable[[], Reconciler],
                    get_store_reconciler: Callable[[], StoreReconciler]) -> None:
    resource = (GROUP, VERSION, store_naming.PLURAL)
    # Explicit ids: kopf names progress annotations after them, and the default id of a
    # closure here ("_register_store.<locals>...") is not a valid annotation name.

    def run(namespace: str, name: str, trigger: str, logger: Any, retry: int = 0) -> None:
        try:
            outcome = get_store_reconciler().reconcile(namespace, name, trigger=trigger)
        except KubeError as exc:
            raise kopf.TemporaryError(f"API call failed: {exc}",
                                      delay=retry_delay(retry)) from exc
        if outcome not in ("unchanged", "gone"):
            logger.debug("reconciled (%s): %s", trigger, outcome)

    @kopf.on.create(*resource, id="store-created", registry=registry)
    def store_created(namespace: str, name: str, logger: Any, retry: int,
                      **_: Any) -> None:
        run(namespace, name, "create", logger, retry)

    @kopf.on.update(*resource, id="store-updated", registry=registry)
    def store_updated(namespace: str, name: str, logger: Any, retry: int,
                      old: Any = None, new: Any = None, **_: Any) -> None:
        run(namespace, name, "update", logger, retry)
        if _store_tls(old) != _store_tls(new):
            # The filter pods of referencing policies connect with the store's TLS
            # settings: roll them now rather than at the next resync.
            get_reconciler().reconcile_referencing(namespace, name, trigger="store")

    @kopf.on.resume(*resource, id="store-resumed", registry=registry)
    def store_resumed(namespace: str, name: str, logger: Any, retry: int,
                      **_: Any) -> None:
        run(namespace, name, "resume", logger, retry)

    # No finalizer (children go by owner references); the watch event is enough to tell
    # the SpamPolicies that referenced the store.
    @kopf.on.event(*resource, registry=registry)
    def store_event(namespace: str, name: str, type: str | None, logger: Any,
                    **_: Any) -> None:
        if type != "DELETED":
            return
        get_store_reconciler().forget(namespace, name)
        get_reconciler().reconcile_referencing(namespace, name, trigger="store")

    @kopf.on.event("apps", "v1", "deployments", registry=registry,
                   labels={"app.kubernetes.io/managed-by": MANAGED_BY,
                           store_naming.STORE_LABEL: kopf.PRESENT})
    def store_deployment_changed(namespace: str, labels: dict[str, str], type: str | None,
                                 body: Any, logger: Any, **_: Any) -> None:
        if type is None:  # the initial listing: resume handlers cover those
            return
        # The reconcile reads the Deployment (from the cache, which kopf's watch may be
        # ahead of): the event's copy first.
        get_store_reconciler().kube.observe(DEPLOYMENTS, dict(body),
                                            deleted=type == "DELETED")
        try:
            run(namespace, labels[store_naming.STORE_LABEL], "deployment", logger)
        except kopf.TemporaryError as exc:
            logger.warning("status update after a Deployment change failed: %s", exc)
