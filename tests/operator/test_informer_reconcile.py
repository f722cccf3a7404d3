"""The reconciler on the watch-fed caches (operator/common/informer.py, issue 13 item 18):
a policy's own update event is acted on from a fresh read even when the cache still holds
the previous spec, and that read refreshes the cache, so the next resync (which reads the
cache) does not undo the change."""

from __future__ import annotations

import copy
import logging
from typing import Any

from kubernetes import client as k8s

from mailwarden_operator.common.informer import CachingKube, start_informers
from mailwarden_operator.common.kube import (
    CONFIGMAPS,
    DEPLOYMENTS,
    SPAMPOLICIES,
    UNSUBSCRIBESTORES,
)
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.reconcile import Reconciler
from tests.operator.conftest import Cluster, example_policy, model_configmap, wait_for


def _hash(cluster: Cluster, ns: str) -> str:
    dep = cluster.kube.get(DEPLOYMENTS, ns, naming.workload_name("mail"))
    return dep["spec"]["template"]["metadata"]["annotations"][naming.HASH_ANNOTATION]


def test_an_update_is_not_undone_by_a_stale_cache(cluster: Cluster) -> None:
    ns = "stale-cache"
    cluster.kube.create(CONFIGMAPS, ns, model_configmap(ns))
    cluster.kube.create(SPAMPOLICIES, ns, example_policy(ns, "mail"))
    configuration = k8s.Configuration()
    configuration.host = cluster.emulator.url
    kube = CachingKube(k8s.ApiClient(configuration))
    start_informers(kube, [ns])
    try:
        assert kube.wait_synced(20)
        reconciler = Reconciler(kube)
        reconciler.reconcile(ns, "mail", trigger="create")
        first = _hash(cluster, ns)
        policies = kube.informers[SPAMPOLICIES][0]
        wait_for(lambda: policies.get(ns, "mail"), 10, "the policy in the cache")
        # The cache stops following (as if its watch lagged behind kopf's) ...
        policies.stop()
        policies.join(10)
        stale = policies.get(ns, "mail")
        # ... and the policy changes.
        rules = copy.deepcopy(stale["spec"]["policy"])
        rules["thresholds"]["tag"] = rules["thresholds"]["tag"] + 0.5
        cluster.kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {"policy": rules}})
        assert policies.get(ns, "mail")["spec"] == stale["spec"]  # still the old spec

        reconciler.reconcile(ns, "mail", trigger="update")
        second = _hash(cluster, ns)
        assert second != first, "the update event was reconciled from the stale cache"
        reconciler.reconcile(ns, "mail", trigger="resync")
        assert _hash(cluster, ns) == second, "the resync undid the update"
    finally:
        kube.stop_informers()


def _deployment_handler(registry: Any, name: str) -> Any:
    return next(h.fn for h in registry._watching.get_all_handlers()
                if h.fn.__name__ == name)


def test_a_deployment_event_is_not_reported_from_an_older_cached_copy(
        cluster: Cluster) -> None:
    """kopf's watch and the cache's deliver the same Deployment events in no fixed order.
    A store reconciled on kopf's event must report what that event says, not the cache's
    older copy (an e2e run saw 'RollingOut, 0 available' while the pods were Ready)."""
    from mailwarden_operator.handlers import build_registry
    from mailwarden_operator.unsubscribestore import naming as store_naming
    from mailwarden_operator.unsubscribestore.reconcile import StoreReconciler
    from mailwarden_operator.unsubscribestore.status import is_ready

    ns = "lagging-cache"
    cluster.kube.create(UNSUBSCRIBESTORES, ns, {
        "apiVersion": "mailwarden.dev/v1alpha1", "kind": "UnsubscribeStore",
        "metadata": {"name": "sup", "namespace": ns},
        "spec": {"storage": {"type": "embedded", "embedded": {"volume": "emptyDir"}},
                 "replicas": {"min": 1, "max": 1}}})
    configuration = k8s.Configuration()
    configuration.host = cluster.emulator.url
    kube = CachingKube(k8s.ApiClient(configuration))
    start_informers(kube, [ns])
    try:
        assert kube.wait_synced(20)
        stores = StoreReconciler(kube)
        assert stores.reconcile(ns, "sup", trigger="create") == "changed", \
            cluster.kube.get(UNSUBSCRIBESTORES, ns, "sup")["status"]["conditions"]
        workload = store_naming.workload_name("sup")
        deployments = kube.informers[DEPLOYMENTS][0]
        wait_for(lambda: deployments.get(ns, workload), 10, "the Deployment in the cache")
        # The cache's watch lags behind kopf's ...
        deployments.stop()
        deployments.join(10)
        # ... when the Deployment controller reports the pods available.
        fresh = cluster.kube.merge_patch(DEPLOYMENTS, ns, workload, {"status": {
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1}}, subresource="status")
        assert not (deployments.get(ns, workload).get("status") or {}).get(
            "availableReplicas")

        registry = build_registry(lambda: Reconciler(kube), webhook=False,
                                  get_store_reconciler=lambda: stores)
        handler = _deployment_handler(registry, "store_deployment_changed")
        handler(namespace=ns, labels=fresh["metadata"]["labels"], type="MODIFIED",
                body=fresh, logger=logging.getLogger("test"))
        status = cluster.kube.get(UNSUBSCRIBESTORES, ns, "sup")["status"]
        assert is_ready(status), status
    finally:
        kube.stop_informers()
