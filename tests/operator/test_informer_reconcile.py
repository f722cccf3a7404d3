"""The reconciler on the watch-fed caches (operator/common/informer.py, issue 13 item 18):
a policy's own update event is acted on from a fresh read even when the cache still holds
the previous spec, and that read refreshes the cache, so the next resync (which reads the
cache) does not undo the change."""

from __future__ import annotations

import copy

from kubernetes import client as k8s

from mailwarden_operator.common.informer import CachingKube, start_informers
from mailwarden_operator.common.kube import CONFIGMAPS, DEPLOYMENTS, SPAMPOLICIES
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
