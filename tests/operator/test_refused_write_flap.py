"""A refused child write stays reported until a write of every child succeeds (issue 13
item 10): a Deployment event, which checks only the Deployment, must not clear the
`ApplyFailed` condition when the back-off pause has run out, or the condition flaps
(False, then True again at the next full attempt) and each flap posts another Event."""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from mailwarden_operator.common.backoff import ApplyBackoff
from mailwarden_operator.common.kube import (
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    SERVICES,
    SPAMPOLICIES,
    Kube,
    KubeError,
    Resource,
)
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.reconcile import Reconciler
from tests.operator.conftest import Cluster, example_policy, model_configmap


class ServicesFrozen(Kube):
    """The API server refusing every Service write (an admission policy would)."""

    def server_side_apply(self, res: Resource, namespace: str | None, name: str,
                          body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if res == SERVICES and not kwargs.get("dry_run"):
            raise KubeError(422, f"Service {name} is invalid: services are frozen")
        return super().server_side_apply(res, namespace, name, body, **kwargs)


def apply_failed(cluster: Cluster, ns: str) -> tuple[str, str]:
    owner = cluster.kube.get(SPAMPOLICIES, ns, "mail") or {}
    c = next(c for c in (owner.get("status") or {}).get("conditions") or []
             if c["type"] == "ApplyFailed")
    return c["status"], c["reason"]


def test_a_deployment_event_after_the_pause_does_not_clear_a_refusal(cluster: Cluster) -> None:
    ns = "refusal-flap"
    cluster.kube.create(CONFIGMAPS, ns, model_configmap(ns))
    cluster.kube.create(SPAMPOLICIES, ns, example_policy(ns, "mail"))
    configuration = k8s.Configuration()
    configuration.host = cluster.emulator.url
    now = [1000.0]
    reconciler = Reconciler(ServicesFrozen(k8s.ApiClient(configuration)),
                            backoff=ApplyBackoff(clock=lambda: now[0]))
    reconciler.reconcile(ns, "mail", trigger="create")
    assert apply_failed(cluster, ns) == ("True", "Invalid")

    now[0] += 60  # the pause is over: the next reconcile may try again
    deployment = cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name("mail"))
    reconciler.reconcile(ns, "mail", trigger="deployment", deployment=deployment)
    assert apply_failed(cluster, ns) == ("True", "Invalid")
    reconciler.reconcile(ns, "mail", trigger="resync")
    assert apply_failed(cluster, ns) == ("True", "Invalid")
    reasons = [e["reason"] for e in cluster.kube.list(EVENTS, ns)]
    assert reasons.count("ApplyFailedInvalid") == 1, reasons
