"""rollout.strategy Canary (issue 18) on the KMock emulator, reconciler in-process, the pods'
/metrics stood in for: the state machine (start, steps, promotion, rollback, refusal to
retry a rolled-back policy) and its state kept in the objects (a new Reconciler at each
step, as after an operator takeover). The real pods and control plane are in
tests/operator_cluster/test_canary.py."""

from __future__ import annotations

from typing import Any

from mailwarden_operator.common.kube import CONFIGMAPS, DEPLOYMENTS, EVENTS, SPAMPOLICIES
from mailwarden_operator.spampolicy import canary, naming
from mailwarden_operator.spampolicy.canary_guards import Figures, judge, parse
from mailwarden_operator.spampolicy.reconcile import Reconciler
from mailwarden_operator.spampolicy.spec import with_defaults
from mailwarden_operator.spampolicy.suppression_health import PODS
from tests.operator.conftest import Cluster

GUARDS = {"minSamples": 10}


def policy(score: float) -> dict[str, Any]:
    return {"rules": [{"name": "VIAGRA", "target": "body", "pattern": "viagra",
                       "score": score}]}


def metrics(messages: int, rejects: int, *, changed: int = 0, errors: int = 0,
            slow: bool = False) -> str:
    """A filter pod's /metrics with these counts."""
    le = "0.25" if slow else "0.005"
    lines = [
        "# TYPE mailwarden_filter_verdicts_total counter",
        f'mailwarden_filter_verdicts_total{{action="REJECT"}} {rejects}.0',
        f'mailwarden_filter_verdicts_total{{action="ACCEPT"}} {messages - rejects}.0',
        "# TYPE mailwarden_filter_requests_total counter",
        f'mailwarden_filter_requests_total{{method="Classify",code="OK"}} '
        f'{messages - errors}.0',
        f'mailwarden_filter_requests_total{{method="Classify",code="INTERNAL"}} {errors}.0',
        "# TYPE mailwarden_filter_classify_duration_seconds histogram",
        f'mailwarden_filter_classify_duration_seconds_bucket{{method="Classify",le="{le}"}} '
        f"{messages}.0",
        f'mailwarden_filter_classify_duration_seconds_bucket{{method="Classify",le="+Inf"}} '
        f"{messages}.0",
        f'mailwarden_filter_classify_duration_seconds_count{{method="Classify"}} {messages}.0',
        f'mailwarden_filter_classify_duration_seconds_sum{{method="Classify"}} 0.1',
        "# TYPE mailwarden_shadow_verdicts_total counter",
        f'mailwarden_shadow_verdicts_total{{live_action="ACCEPT",shadow_action="REJECT",'
        f'direction="stricter"}} {changed}.0',
        f'mailwarden_shadow_verdicts_total{{live_action="ACCEPT",shadow_action="ACCEPT",'
        f'direction="same"}} {messages - changed}.0',
    ]
    return "\n".join(lines) + "\n"


class Pods:
    """Filter pods in the emulator (it runs no controllers) and what their /metrics say."""

    def __init__(self, cluster: Cluster, ns: str) -> None:
        self.kube, self.ns, self.scrapes, self.count = cluster.kube, ns, {}, 0

    def add(self, policy_hash: str, text: str | None, *, canary_track: bool) -> None:
        self.count += 1
        ip = f"10.0.0.{self.count}"
        labels = naming.common_labels("mail")
        if canary_track:
            labels[naming.TRACK_LABEL] = naming.CANARY_TRACK
        status = {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        created = self.kube.create(PODS, self.ns, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod-{self.count}", "namespace": self.ns, "labels": labels,
                         "annotations": {naming.HASH_ANNOTATION: policy_hash}},
            "spec": {"containers": [{"name": naming.CONTAINER_NAME, "image": "x"}]},
            "status": status})
        self.kube.merge_patch(PODS, self.ns, created["metadata"]["name"], {"status": status},
                              subresource="status")
        if text is not None:  # None: its /metrics cannot be reached
            self.scrapes[ip] = text

    def fetch(self, url: str) -> str:
        return self.scrapes[url.split("//")[1].split(":")[0]]


def deployment_done(kube, ns: str, name: str) -> None:
    """What the Deployment controller would report once every pod is updated and ready."""
    body = kube.get(DEPLOYMENTS, ns, name)
    replicas = body["spec"]["replicas"]
    kube.merge_patch(DEPLOYMENTS, ns, name, {"status": {
        "observedGeneration": body["metadata"].get("generation", 1), "replicas": replicas,
        "updatedReplicas": replicas, "readyReplicas": replicas,
        "availableReplicas": replicas}}, subresource="status")


def create(kube, ns: str, steps: list[dict[str, Any]]) -> None:
    kube.create(SPAMPOLICIES, ns, {
        "apiVersion": "mailwarden.dev/v1alpha1", "kind": "SpamPolicy",
        "metadata": {"name": "mail", "namespace": ns},
        "spec": {"policy": policy(6), "rollout": {"strategy": "Canary", "canary": {
            "steps": steps, "guards": GUARDS}}}})


def served(kube, ns: str, name: str) -> str | None:
    body = kube.get(DEPLOYMENTS, ns, name)
    if body is None:
        return None
    return body["spec"]["template"]["metadata"]["annotations"][naming.HASH_ANNOTATION]


def canary_pods(kube, ns: str) -> int | None:
    """The canary Deployment's replica count (None: it was never created)."""
    body = kube.get(DEPLOYMENTS, ns, naming.canary_name("mail"))
    return None if body is None else body["spec"]["replicas"]


def reasons(kube, ns: str) -> list[str]:
    return [e["reason"] for e in kube.list(EVENTS, ns)
            if e["involvedObject"]["name"] == "mail"]


def condition(body: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == canary.CONDITION)


def test_a_canary_that_rejects_ham_is_rolled_back_and_not_retried(cluster: Cluster) -> None:
    kube, ns = cluster.kube, "canary-bad"
    pods = Pods(cluster, ns)

    last: Reconciler

    def reconciler() -> Reconciler:  # a new one each time: nothing kept in memory
        nonlocal last
        last = Reconciler(kube, metrics_fetch=pods.fetch)
        return last

    create(kube, ns, [{"weight": 10, "holdSeconds": 600}, {"weight": 50}])
    reconciler().reconcile(ns, "mail")
    stable = served(kube, ns, naming.workload_name("mail"))
    assert stable and served(kube, ns, naming.canary_name("mail")) is None  # first: at once

    kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {"policy": policy(20)}})
    reconciler().reconcile(ns, "mail")
    body = kube.get(SPAMPOLICIES, ns, "mail")
    candidate = body["status"]["canary"]["policyHash"]
    assert candidate != stable and served(kube, ns, naming.workload_name("mail")) == stable
    assert (ns, "mail") in last.canaries()  # re-checked between resyncs
    deployment = kube.get(DEPLOYMENTS, ns, naming.canary_name("mail"))
    template = deployment["spec"]["template"]
    # 10% of the pods: one canary pod next to the two main ones; it judges a sample with
    # the previous policy too (the verdict-change guard); the Services' selector takes it.
    assert deployment["spec"]["replicas"] == 1
    assert template["metadata"]["annotations"] == {
        naming.HASH_ANNOTATION: candidate, naming.SHADOW_HASH_ANNOTATION: stable}
    assert deployment["spec"]["selector"]["matchLabels"] == {
        **naming.selector_labels("mail"), naming.TRACK_LABEL: naming.CANARY_TRACK}
    assert naming.selector_labels("mail").items() <= template["metadata"]["labels"].items()
    assert kube.get(CONFIGMAPS, ns, naming.configmap_name("mail", candidate)) is not None
    assert body["status"]["canary"]["step"] == 0 and condition(body)["status"] == "False"

    # The canary pod REJECTs 40% of its messages, the main ones 1%.
    pods.add(stable, metrics(200, 2), canary_track=False)
    pods.add(candidate, metrics(50, 20), canary_track=True)
    reconciler().reconcile(ns, "mail")
    body = kube.get(SPAMPOLICIES, ns, "mail")
    assert canary_pods(kube, ns) == 0  # retired (the operator may not delete Deployments)
    assert last.canaries() == []
    assert served(kube, ns, naming.workload_name("mail")) == stable
    assert "canary" not in body["status"]
    rollback = body["status"]["lastRollback"]
    assert (rollback["policyHash"], rollback["stablePolicyHash"], rollback["guard"],
            rollback["observed"], rollback["limit"], rollback["step"]) == (
        candidate, stable, "rejectRateIncrease", 0.39, 0.05, 0)
    assert rollback["secondsAfterStepStart"] >= 0
    cond = condition(body)
    assert (cond["status"], cond["reason"]) == ("True", "GuardCrossed")
    assert "rejectRateIncrease 0.39 > limit 0.05" in cond["message"]
    warning = [e for e in kube.list(EVENTS, ns) if e["reason"] == "CanaryRolledBack"]
    assert len(warning) == 1 and warning[0]["type"] == "Warning"
    assert "rejectRate=0.4" in warning[0]["message"]

    # The same policy is not tried again (resyncs), another one is.
    reconciler().reconcile(ns, "mail", trigger="resync")
    assert canary_pods(kube, ns) == 0
    assert reasons(kube, ns).count("CanaryRolledBack") == 1
    kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {"policy": policy(7)}})
    reconciler().reconcile(ns, "mail")
    body = kube.get(SPAMPOLICIES, ns, "mail")
    assert body["status"]["canary"]["policyHash"] not in (stable, candidate)
    assert canary_pods(kube, ns) == 1  # the retired Deployment serves the new canary
    assert condition(body)["status"] == "False"
    assert body["status"]["lastRollback"]["policyHash"] == candidate  # the history stays
    assert reasons(kube, ns).count("CanaryStarted") == 2


def test_a_good_canary_promotes_through_every_step(cluster: Cluster) -> None:
    kube, ns = cluster.kube, "canary-good"
    pods = Pods(cluster, ns)

    def reconcile() -> dict[str, Any]:
        Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail")
        return kube.get(SPAMPOLICIES, ns, "mail")

    create(kube, ns, [{"weight": 10, "holdSeconds": 0}, {"weight": 50, "holdSeconds": 0}])
    reconcile()
    deployment_done(kube, ns, naming.workload_name("mail"))
    stable = served(kube, ns, naming.workload_name("mail"))
    kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {"policy": policy(7)}})
    body = reconcile()
    candidate = body["status"]["canary"]["policyHash"]
    pods.add(stable, metrics(300, 3), canary_track=False)
    pods.add(candidate, metrics(5, 0), canary_track=True)

    pods.add(candidate, None, canary_track=True)
    # Pods not available yet: the step's hold has not begun; a pod that cannot be read is
    # reported (it counts nothing).
    body = reconcile()
    assert "stepStartedAt" not in body["status"]["canary"]
    assert "waiting for its pods" in condition(body)["message"]
    assert "/metrics of 1 of 2 canary pods unreadable" in condition(body)["message"]
    figures = body["status"]["canary"]["figures"]
    assert (figures["canaryPods"], figures["canaryPodsRead"], figures["stablePods"]) == (
        2, 1, 1)
    deployment_done(kube, ns, naming.canary_name("mail"))
    # Available, held (0 s) but fewer than minSamples messages: no step yet.
    body = reconcile()
    assert body["status"]["canary"]["step"] == 0 and body["status"]["canary"]["stepStartedAt"]
    pods.scrapes["10.0.0.2"] = metrics(40, 1, changed=2)
    body = reconcile()
    assert body["status"]["canary"]["step"] == 1
    assert body["status"]["canary"]["figures"]["verdictChangeRate"] == 0.05
    deployment = kube.get(DEPLOYMENTS, ns, naming.canary_name("mail"))
    assert deployment["spec"]["replicas"] == 2  # 50%: as many as the two main pods
    deployment_done(kube, ns, naming.canary_name("mail"))
    body = reconcile()
    assert body["status"]["canary"]["promoted"] is True
    assert served(kube, ns, naming.workload_name("mail")) == candidate
    # The canary stays until the main Deployment has rolled out the new policy.
    assert canary_pods(kube, ns) == 2
    deployment_done(kube, ns, naming.workload_name("mail"))
    body = reconcile()
    assert canary_pods(kube, ns) == 0
    assert "canary" not in body["status"] and "lastRollback" not in body["status"]
    assert body["status"]["policyHash"] == candidate
    assert condition(body)["reason"] == "CanaryPromoted"
    assert [r for r in reasons(kube, ns) if r.startswith("Canary")] == [
        "CanaryStarted", "CanaryStep", "CanaryPromoted"]


def test_leaving_the_canary_strategy_retires_the_canary(cluster: Cluster) -> None:
    kube, ns = cluster.kube, "canary-off"
    pods = Pods(cluster, ns)
    create(kube, ns, [{"weight": 10}])
    Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail")
    kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {"policy": policy(7)}})
    Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail")
    assert canary_pods(kube, ns) == 1
    kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {"rollout": {
        "strategy": "RollingUpdate"}}})
    Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail")
    body = kube.get(SPAMPOLICIES, ns, "mail")
    assert canary_pods(kube, ns) == 0
    assert "canary" not in body["status"]
    assert canary.CONDITION not in {c["type"] for c in body["status"]["conditions"]}
    assert served(kube, ns, naming.workload_name("mail")) == body["status"][
        "desiredPolicyHash"]


def test_the_canary_follows_the_autoscaler_and_the_store_reference(cluster: Cluster) -> None:
    """The canary's size is the step's share of what the HPA runs now; its pods are the
    main ones' but for the policies (same store, same flags)."""
    kube, ns = cluster.kube, "canary-hpa"
    pods = Pods(cluster, ns)
    create(kube, ns, [{"weight": 10}])
    kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {
        "unsubscribeStoreRef": {"name": "unsub"}, "replicas": {"max": 40}}})
    Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail")
    kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {"policy": policy(7)}})
    Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail")
    assert canary_pods(kube, ns) == 1
    # The HorizontalPodAutoscaler scales the main Deployment to 20.
    kube.merge_patch(DEPLOYMENTS, ns, naming.workload_name("mail"), {"spec": {"replicas": 20}})
    Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail", trigger="canary")
    assert canary_pods(kube, ns) == 3  # 3 of 23 pods: at least 10%
    main = kube.get(DEPLOYMENTS, ns, naming.workload_name("mail"))
    assert main["spec"]["replicas"] == 20  # the HPA's count is left alone
    args = kube.get(DEPLOYMENTS, ns, naming.canary_name("mail"))["spec"]["template"][
        "spec"]["containers"][0]["args"]
    assert args[:args.index("--shadow-policy-dir")] == main["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "--suppression-store" in args


def test_an_invalid_spec_mid_canary_retires_the_canary(cluster: Cluster) -> None:
    """The canary serves a policy the spec no longer asks for, and could not be judged
    against an invalid one: it is retired; the previous policy keeps serving."""
    kube, ns = cluster.kube, "canary-invalid"
    pods = Pods(cluster, ns)
    create(kube, ns, [{"weight": 10}])
    Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail")
    stable = served(kube, ns, naming.workload_name("mail"))
    kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {"policy": policy(7)}})
    Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail")
    assert canary_pods(kube, ns) == 1
    kube.merge_patch(SPAMPOLICIES, ns, "mail", {"spec": {"policy": {"rules": [
        {"name": "BROKEN", "target": "body", "pattern": "(unclosed", "score": 1}]}}})
    assert Reconciler(kube, metrics_fetch=pods.fetch).reconcile(ns, "mail") == "rejected"
    body = kube.get(SPAMPOLICIES, ns, "mail")
    assert canary_pods(kube, ns) == 0 and "canary" not in body["status"]
    assert served(kube, ns, naming.workload_name("mail")) == stable


def guards(**changes: float) -> dict[str, Any]:
    spec = with_defaults({"rollout": {"canary": {"guards": {"minSamples": 10}}}})
    return {**spec["rollout"]["canary"]["guards"], **changes}


def test_each_guard_judges_against_the_previous_policy() -> None:
    base = parse(metrics(1000, 10))
    assert judge(guards(), parse(metrics(100, 5)), base) is None  # 4 points more: within
    crossed = judge(guards(), parse(metrics(100, 10)), base)
    assert (crossed.guard, round(crossed.observed, 3)) == ("rejectRateIncrease", 0.09)
    crossed = judge(guards(), parse(metrics(100, 0, changed=30)), base)
    assert (crossed.guard, crossed.observed) == ("verdictChangeRate", 0.3)
    crossed = judge(guards(), parse(metrics(100, 0, errors=5)), base)
    assert (crossed.guard, crossed.observed) == ("errorRateIncrease", 0.05)
    crossed = judge(guards(), parse(metrics(100, 0, slow=True)), base)
    # 0.25 s against 0.005 s, which counts as the 0.05 s floor.
    assert (crossed.guard, crossed.observed) == ("p99LatencyRatio", 5.0)
    # Under the floor, a few milliseconds more are not judged (a good canary was rolled
    # back for 0.003 s against 0.001 s on the real cluster before the floor existed).
    assert judge(guards(), parse(metrics(100, 0)), parse(metrics(1000, 10).replace(
        'le="0.005"', 'le="0.001"'))) is None
    assert judge(guards(p99LatencyFloorSeconds=0), parse(metrics(100, 0)), parse(metrics(
        1000, 10).replace('le="0.005"', 'le="0.001"'))).guard == "p99LatencyRatio"
    # Too few canary messages: nothing judged yet.
    assert judge(guards(), parse(metrics(9, 9)), base) is None
    # The previous policy's rate counts as 0 until it has minSamples: held to the limit.
    crossed = judge(guards(), parse(metrics(100, 6)), parse(metrics(5, 5)))
    assert crossed.guard == "rejectRateIncrease"
    assert Figures().p99() is None and parse(metrics(10, 0)).p99() == 0.005
    assert judge(guards(), parse(metrics(0, 0)), base) is None  # no traffic: no verdict


def test_canary_pods_are_the_step_share_of_all_pods() -> None:
    assert canary.canary_replicas(10, 2, 10) == 1
    assert canary.canary_replicas(10, 20, 100) == 3  # 3 of 23: 13%, never fewer than asked
    assert canary.canary_replicas(50, 4, 10) == 4
    assert canary.canary_replicas(90, 4, 10) == 10  # capped at replicas.max
