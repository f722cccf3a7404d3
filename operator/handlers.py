"""kopf registration: every handler only hands the object to a reconciler.

Triggers: create/update/resume of a SpamPolicy or an UnsubscribeStore, events of the
Deployments the operator manages (rollout progress → status), and the deletion of a store
(SpamPolicies referencing it update their SuppressionReady condition). The periodic resync is
`resync.py` (not a kopf timer: timers put finalizers on every object). The validating
webhook reuses the policy validator.
"""

from __future__ import annotations

from typing import Any, Callable

import kopf

from mailwarden_operator.common import metrics
from mailwarden_operator.common.kube import KubeError
from mailwarden_operator.common.naming import GROUP, MANAGED_BY, VERSION
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.reconcile import Reconciler
from mailwarden_operator.spampolicy.webhook import admission_errors, admission_message
from mailwarden_operator.unsubscribestore import naming as store_naming
from mailwarden_operator.unsubscribestore.reconcile import StoreReconciler

RETRY_DELAY_SECONDS = 5.0
WEBHOOK_ID = "validate-spampolicy"


def build_registry(get_reconciler: Callable[[], Reconciler], *, webhook: bool,
                   get_store_reconciler: Callable[[], StoreReconciler] | None = None,
                   ) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, naming.PLURAL)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        # The service account in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config).
        return kopf.login_via_client(**kwargs)

    def run(namespace: str, name: str, trigger: str, logger: Any) -> None:
        try:
            outcome = get_reconciler().reconcile(namespace, name, trigger=trigger)
        except KubeError as exc:
            # Retried by kopf with a delay; the status keeps its last observed state.
            raise kopf.TemporaryError(f"API call failed: {exc}",
                                      delay=RETRY_DELAY_SECONDS) from exc
        if outcome not in ("unchanged", "gone"):
            logger.debug("reconciled (%s): %s", trigger, outcome)

    @kopf.on.create(*resource, registry=registry)
    def spampolicy_created(namespace: str, name: str, logger: Any, **_: Any) -> None:
        run(namespace, name, "create", logger)

    @kopf.on.update(*resource, registry=registry)
    def spampolicy_updated(namespace: str, name: str, logger: Any, **_: Any) -> None:
        run(namespace, name, "update", logger)

    @kopf.on.resume(*resource, registry=registry)
    def spampolicy_resumed(namespace: str, name: str, logger: Any, **_: Any) -> None:
        run(namespace, name, "resume", logger)

    # optional: no finalizer — children go by owner references (garbage collection).
    @kopf.on.delete(*resource, optional=True, registry=registry)
    def spampolicy_deleted(namespace: str, name: str, **_: Any) -> None:
        get_reconciler().forget(namespace, name)

    @kopf.on.event("apps", "v1", "deployments", registry=registry,
                   labels={"app.kubernetes.io/managed-by": MANAGED_BY,
                           naming.POLICY_LABEL: kopf.PRESENT})
    def deployment_changed(namespace: str, labels: dict[str, str], type: str | None,
                           logger: Any, **_: Any) -> None:
        if type is None:  # the initial listing: resume handlers cover those
            return
        try:
            run(namespace, labels[naming.POLICY_LABEL], "deployment", logger)
        except kopf.TemporaryError as exc:
            # Event handlers are not retried; the resync timer catches up.
            logger.warning("status update after a Deployment change failed: %s", exc)

    if get_store_reconciler is not None:
        _register_store(registry, get_reconciler, get_store_reconciler)

    if webhook:
        @kopf.on.validate(*resource, id=WEBHOOK_ID, registry=registry)
        def validate_spampolicy(spec: dict[str, Any], name: str | None, **_: Any) -> None:
            errors = admission_errors(dict(spec or {}), name or "")
            metrics.WEBHOOK_REVIEWS.labels("false" if errors else "true").inc()
            if errors:
                raise kopf.AdmissionError(admission_message(errors), code=422)

    return registry


def _register_store(registry: kopf.OperatorRegistry,
                    get_reconciler: Callable[[], Reconciler],
                    get_store_reconciler: Callable[[], StoreReconciler]) -> None:
    resource = (GROUP, VERSION, store_naming.PLURAL)
    # Explicit ids: kopf names progress annotations after them, and the default id of a
    # closure here ("_register_store.<locals>...") is not a valid annotation name.

    def run(namespace: str, name: str, trigger: str, logger: Any) -> None:
        try:
            outcome = get_store_reconciler().reconcile(namespace, name, trigger=trigger)
        except KubeError as exc:
            raise kopf.TemporaryError(f"API call failed: {exc}",
                                      delay=RETRY_DELAY_SECONDS) from exc
        if outcome not in ("unchanged", "gone"):
            logger.debug("reconciled (%s): %s", trigger, outcome)

    @kopf.on.create(*resource, id="store-created", registry=registry)
    def store_created(namespace: str, name: str, logger: Any, **_: Any) -> None:
        run(namespace, name, "create", logger)

    @kopf.on.update(*resource, id="store-updated", registry=registry)
    def store_updated(namespace: str, name: str, logger: Any, **_: Any) -> None:
        run(namespace, name, "update", logger)

    @kopf.on.resume(*resource, id="store-resumed", registry=registry)
    def store_resumed(namespace: str, name: str, logger: Any, **_: Any) -> None:
        run(namespace, name, "resume", logger)

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
                                 logger: Any, **_: Any) -> None:
        if type is None:  # the initial listing: resume handlers cover those
            return
        try:
            run(namespace, labels[store_naming.STORE_LABEL], "deployment", logger)
        except kopf.TemporaryError as exc:
            logger.warning("status update after a Deployment change failed: %s", exc)
