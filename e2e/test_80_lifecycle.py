"""The end of a release's life, on the real control plane: deleting a SpamPolicy removes every
child through Kubernetes' garbage collector (owner references, not the operator); `helm
upgrade` with unchanged values changes nothing; `helm uninstall` leaves nothing but the CRDs
(and nothing it left blocks deleting the custom resources afterwards).

The last file of the suite: uninstalling is final."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from e2e import chart
from e2e.audit import AuditLog
from e2e.conftest import E2E, example
from e2e.install import CHART, RELEASE, SYSTEM_NAMESPACE, chart_args, helm
from e2e.kube import Kube, is_true, observed, wait_for

pytestmark = pytest.mark.timeout(600)

GC_USER = "system:serviceaccount:kube-system:generic-garbage-collector"
# What a SpamPolicy's children can be, and what they own in turn.
CHILD_TYPES = ("configmaps", "deployments.apps", "replicasets.apps", "pods", "services",
               "endpointslices.discovery.k8s.io", "horizontalpodautoscalers.autoscaling",
               "poddisruptionbudgets.policy")


def owned_closure(kube: Kube, root_uid: str) -> dict[str, dict[str, Any]]:
    """Every object of CHILD_TYPES whose owner-reference chain leads to `root_uid`:
    uid -> object."""
    objects = kube.items(",".join(CHILD_TYPES))
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        for ref in obj["metadata"].get("ownerReferences") or []:
            by_owner.setdefault(ref["uid"], []).append(obj)
    found: dict[str, dict[str, Any]] = {}
    frontier = [root_uid]
    while frontier:
        uid = frontier.pop()
        for child in by_owner.get(uid, []):
            if child["metadata"]["uid"] not in found:
                found[child["metadata"]["uid"]] = child
                frontier.append(child["metadata"]["uid"])
    return found


def describe(objects: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects.values())


def test_deleting_a_spampolicy_removes_every_child_through_the_garbage_collector(
        e2e: E2E) -> None:
    doc = copy.deepcopy(example("spampolicy.yaml"))
    doc["metadata"] = {"name": "e2e-gc"}
    e2e.kube.apply(doc)
    sp = wait_for(lambda: (lambda s: s if observed(s) and is_true(s, "Ready") else None)(
        e2e.kube.get("spampolicy", "e2e-gc")), 300, "SpamPolicy e2e-gc to be Ready", interval=2)
    children = owned_closure(e2e.kube, sp["metadata"]["uid"])
    kinds = {o["kind"] for o in children.values()}
    print(f"children of SpamPolicy e2e-gc: {describe(children)}")
    assert {"ConfigMap", "Deployment", "ReplicaSet", "Pod", "Service", "EndpointSlice",
            "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds, kinds

    audit = AuditLog(e2e.cluster.audit_log) if e2e.cluster.audit_log else None
    mark = audit.mark() if audit else 0
    began = time.monotonic()
    e2e.kube.run("delete", "spampolicy", "e2e-gc", "--wait=true", "--timeout=120s")

    def all_gone() -> bool:
        left = {o["metadata"]["uid"] for o in e2e.kube.items(",".join(CHILD_TYPES))}
        return not left & set(children)

    wait_for(all_gone, 300, "every child of e2e-gc to be deleted", interval=2)
    print(f"every child gone {time.monotonic() - began:.1f} s after the delete")
    if audit is not None:
        # (resource, name) of the policy's direct children, e.g. ("services", "e2e-gc-filter")
        direct = {(o["kind"].lower() + "s", o["metadata"]["name"]) for o in children.values()
                  if any(r["uid"] == sp["metadata"]["uid"]
                         for r in o["metadata"].get("ownerReferences") or [])}
        deletes = [e for e in audit.writes(since=mark) if e.verb == "delete"
                   and e.namespace == e2e.namespace and (e.resource, e.name) in direct]
        assert {(e.resource, e.name) for e in deletes} == direct, [str(e) for e in deletes]
        deleters = {e.user for e in deletes}
        print(f"audit: {len(deletes)} deletes of direct children, by {sorted(deleters)}")
        # Owner references did it: the garbage collector, never the operator.
        assert deleters == {GC_USER}, [str(e) for e in deletes]


def snapshot(e2e: E2E) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(kind, namespace, name) -> (uid, resourceVersion) of the release's objects and of
    everything in the release's namespace, and of the CRDs."""
    kube = chart.system(e2e.kube)
    out: dict[tuple[str, str, str], tuple[str, str]] = {}
    for obj in kube.items("all,configmaps,secrets,serviceaccounts,roles,rolebindings,pdb,"
                          "endpointslices"):
        out[(obj["kind"], SYSTEM_NAMESPACE, obj["metadata"]["name"])] = \
            (obj["metadata"]["uid"], obj["metadata"]["resourceVersion"])
    for doc in chart.manifest(e2e.cluster):
        key = chart.object_key(doc)
        if doc["kind"] == "ClusterKopfPeering":
            continue  # its status is the operators' heartbeat, written every few seconds
        live = e2e.kube.json("get", doc["kind"].lower(), key[2], "-n",
                             key[1] or "default", namespaced=False)
        out[key] = (live["metadata"]["uid"], live["metadata"]["resourceVersion"])
    for crd in e2e.kube.items("crd", namespaced=False):
        out[("CustomResourceDefinition", "", crd["metadata"]["name"])] = \
            (crd["metadata"]["uid"], crd["metadata"]["resourceVersion"])
    return out


def helm_release_record(key: tuple[str, str, str]) -> bool:
    """Helm's own bookkeeping: one Secret per revision (storage driver `secret`)."""
    return key[0] == "Secret" and key[2].startswith(f"sh.helm.release.v1.{RELEASE}.v")


def test_helm_upgrade_with_unchanged_values_writes_nothing(e2e: E2E) -> None:
    before = snapshot(e2e)
    audit = AuditLog(e2e.cluster.audit_log) if e2e.cluster.audit_log else None
    mark = audit.mark() if audit else 0
    result = helm(e2e.cluster, "upgrade", *chart_args(e2e.cluster), "--wait", "--timeout",
                  "5m")
    assert result.returncode == 0, result.output
    time.sleep(5)  # anything a change would set off (a rollout, a reconcile) starts by now
    after = snapshot(e2e)
    changed = sorted(f"{k[0]} {k[1]}/{k[2]}" for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and not helm_release_record(k))
    print(f"helm upgrade took {result.seconds:.1f} s; objects changed: {changed or 'none'}")
    assert not changed
    if audit is not None:
        writes = audit.writes(since=mark)
        by_helm = [e for e in writes if e.user_agent.startswith("Helm")]
        # Anyone else writing to the release's objects or namespace (but the operators'
        # peering heartbeat and leases) would be a reaction to a change.
        others = [str(e) for e in writes if not e.user_agent.startswith("Helm")
                  and (e.namespace == SYSTEM_NAMESPACE or e.resource.startswith(
                      ("clusterroles", "clusterrolebindings",
                       "validatingwebhookconfigurations", "customresourcedefinitions")))
                  and e.resource not in ("leases", "events")]
        print(f"audit: helm sent {len(by_helm)} write requests "
              f"({sorted({e.verb for e in by_helm})}); every one left its object unchanged")
        assert not others, others


def test_helm_uninstall_leaves_nothing_but_the_crds(e2e: E2E) -> None:
    rendered = [chart.object_key(doc) for doc in chart.manifest(e2e.cluster)]
    crds = sorted(p.stem for p in (CHART / "crds").glob("*.yaml"))
    result = helm(e2e.cluster, "uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait",
                  "--timeout", "5m")
    assert result.returncode == 0, result.output

    def leftovers() -> list[str]:
        left = []
        for kind, namespace, name in rendered:
            if e2e.kube.get(kind.lower(), name, namespaced=False) if not namespace else \
                    e2e.kube_in(namespace).get(kind.lower(), name):
                left.append(f"{kind} {namespace}/{name}")
        labelled = e2e.kube.run("get", "all,configmaps,secrets,serviceaccounts,roles,"
                                "rolebindings,pdb,clusterroles,clusterrolebindings,"
                                "validatingwebhookconfigurations,clusterkopfpeerings", "-A",
                                "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name",
                                namespaced=False).stdout.split()
        return left + labelled

    deadline = time.monotonic() + 120
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(2)
    assert not left, f"left after helm uninstall: {left}"
    in_namespace = chart.system(e2e.kube).run(
        "get", "all,configmaps,secrets,serviceaccounts,roles,rolebindings,pdb", "-o",
        "name").stdout.split()
    # What Kubernetes itself keeps in every namespace; helm's --create-namespace namespace
    # stays (helm never deletes namespaces).
    assert sorted(in_namespace) == ["configmap/kube-root-ca.crt", "serviceaccount/default"], \
        in_namespace
    live_crds = sorted(c["metadata"]["name"] for c in e2e.kube.items("crd", namespaced=False))
    assert set(crds) <= set(live_crds), live_crds
    print(f"after helm uninstall: {len(rendered)} rendered objects gone, CRDs kept: {crds}")

    # Nothing left behind blocks the custom resources' own deletion (no finalizer of an
    # operator that is gone, no webhook that cannot answer): they and their children go.
    for kind in ("spampolicies", "unsubscribestores"):
        e2e.kube.run("delete", kind, "--all", "--all-namespaces", "--wait=true",
                     "--timeout=120s", namespaced=False)
        assert not e2e.kube.items(kind, "--all-namespaces", namespaced=False)
