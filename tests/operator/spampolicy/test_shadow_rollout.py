"""rollout.strategy Shadow (issue 18) on the KMock emulator, reconciler in-process: a new
valid policy is shadowed by the pods while the running one keeps serving, promoted by the
annotation naming its hash or by going back to RollingUpdate."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.kube import CONFIGMAPS, DEPLOYMENTS, EVENTS, SPAMPOLICIES
from mailwarden_operator.handlers import promotes_shadow
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.reconcile import Reconciler
from tests.operator.conftest import Cluster


def policy(score: float) -> dict[str, Any]:
    return {"rules": [{"name": "VIAGRA", "target": "body", "pattern": "viagra",
                       "score": score}]}


def pods(kube, ns: str, name: str) -> tuple[str, str | None, list[str], list[str]]:
    deployment = kube.get(DEPLOYMENTS, ns, naming.workload_name(name))
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    return (annotations[naming.HASH_ANNOTATION],
            annotations.get(naming.SHADOW_HASH_ANNOTATION),
            template["spec"]["containers"][0]["args"],
            [v["configMap"]["name"] for v in template["spec"]["volumes"] if "configMap" in v])


def test_shadow_then_promote(cluster: Cluster) -> None:
    kube, ns, name = cluster.kube, "shadow", "mail"
    reconciler = Reconciler(kube)
    kube.create(SPAMPOLICIES, ns, {
        "apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"policy": policy(6), "rollout": {
            "strategy": "Shadow", "shadow": {"sampleRate": 0.25, "cpuFraction": 0.05}}}})
    reconciler.reconcile(ns, name)
    first, shadowed, args, _ = pods(kube, ns, name)
    assert shadowed is None and "--shadow-policy-dir" not in args  # nothing ran before

    kube.merge_patch(SPAMPOLICIES, ns, name, {"spec": {"policy": policy(9)}})
    reconciler.reconcile(ns, name)
    serving, shadowed, args, volumes = pods(kube, ns, name)
    body = kube.get(SPAMPOLICIES, ns, name)
    candidate = body["status"]["shadowPolicyHash"]
    assert serving == first and shadowed == candidate != first
    assert args[-6:] == ["--shadow-policy-dir", naming.SHADOW_POLICY_MOUNT,
                         "--shadow-sample-rate", "0.25", "--shadow-cpu-fraction", "0.05"]
    assert naming.configmap_name(name, candidate) in volumes
    assert kube.get(CONFIGMAPS, ns, naming.configmap_name(name, candidate)) is not None
    assert body["status"]["desiredPolicyHash"] == first
    assert body["status"]["shadow"]["policyHash"] == candidate  # no pods here to read
    assert not promotes_shadow(body)

    # kubectl annotate spampolicy mail mailwarden.dev/promote-policy=<hash>
    kube.merge_patch(SPAMPOLICIES, ns, name, {"metadata": {"annotations": {
        naming.PROMOTE_ANNOTATION: candidate}}})
    assert promotes_shadow(kube.get(SPAMPOLICIES, ns, name))
    # Another operator replica takes over (nothing in memory): the state is in the object
    # and its Deployment, so it promotes just the same.
    reconciler = Reconciler(kube)
    reconciler.reconcile(ns, name, trigger="promote")
    serving, shadowed, args, _ = pods(kube, ns, name)
    body = kube.get(SPAMPOLICIES, ns, name)
    assert serving == candidate and shadowed is None and "--shadow-policy-dir" not in args
    assert "shadowPolicyHash" not in body["status"] and not promotes_shadow(body)
    reasons = [e["reason"] for e in kube.list(EVENTS, ns)
               if e["involvedObject"]["name"] == name]
    assert reasons.count("ShadowStarted") == 1 and reasons.count("ShadowPromoted") == 1

    # Another change is shadowed again; setting RollingUpdate promotes it.
    kube.merge_patch(SPAMPOLICIES, ns, name, {"spec": {"policy": policy(12)}})
    reconciler.reconcile(ns, name)
    assert pods(kube, ns, name)[:2] == (candidate,
                                        kube.get(SPAMPOLICIES, ns, name)["status"][
                                            "shadowPolicyHash"])
    kube.merge_patch(SPAMPOLICIES, ns, name, {"spec": {"rollout": {
        "strategy": "RollingUpdate"}}})
    reconciler.reconcile(ns, name)
    serving, shadowed, _, _ = pods(kube, ns, name)
    assert serving not in (first, candidate) and shadowed is None


SCRAPE = """# TYPE mailwarden_shadow_verdicts_total counter
mailwarden_shadow_verdicts_total{live_action="ACCEPT",shadow_action="REJECT",direction="stricter"} 3.0
mailwarden_shadow_verdicts_total{live_action="ACCEPT",shadow_action="ACCEPT",direction="same"} 10.0
mailwarden_shadow_verdicts_total{live_action="TAG",shadow_action="ACCEPT",direction="laxer"} 1.0
# TYPE mailwarden_shadow_rule_changes_total counter
mailwarden_shadow_rule_changes_total{rule="LUNCH",change="added",direction="stricter"} 3.0
mailwarden_shadow_rule_changes_total{rule="OLD",change="removed",direction="laxer"} 1.0
# TYPE mailwarden_shadow_skipped_total counter
mailwarden_shadow_skipped_total{reason="cpu"} 2.0
"""


def test_status_sums_the_agreement_of_the_pods_shadowing_the_candidate(
        cluster: Cluster) -> None:
    from mailwarden_operator.spampolicy import shadow_agreement
    from mailwarden_operator.spampolicy.suppression_health import PODS

    kube, ns = cluster.kube, "agreement"
    owner = {"metadata": {"name": "mail", "namespace": ns}}

    def pod(name: str, ip: str, shadow: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns,
                             "labels": naming.selector_labels("mail"),
                             "annotations": {naming.SHADOW_HASH_ANNOTATION: shadow}},
                "spec": {"containers": [{"name": naming.CONTAINER_NAME, "image": "x"}]},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}

    for body in (pod("a", "10.0.0.1", "cand"), pod("b", "10.0.0.2", "cand"),
                 pod("c", "10.0.0.3", "older"), pod("d", "10.0.0.4", "cand")):
        created = kube.create(PODS, ns, body)
        kube.merge_patch(PODS, ns, created["metadata"]["name"], {"status": body["status"]},
                         subresource="status")

    def fetch(url: str) -> str:
        if "10.0.0.4" in url:
            raise OSError("connection refused")
        assert "10.0.0.3" not in url  # shadows another candidate: not asked
        return SCRAPE

    summary = shadow_agreement.observe(kube, owner, "cand", fetch=fetch)
    assert summary == {"policyHash": "cand", "pods": 3, "podsRead": 2, "sampled": 28,
                       "stricter": 6, "laxer": 2, "skipped": 4, "topRules": [
                           {"rule": "LUNCH", "change": "added", "direction": "stricter",
                            "messages": 6},
                           {"rule": "OLD", "change": "removed", "direction": "laxer",
                            "messages": 2}]}
