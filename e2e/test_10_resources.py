"""Both custom resources become Ready on a real API server, and `kubectl get` shows the
printer columns the CRDs in crds/ declare (the chart installs that very CRD)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from e2e.conftest import E2E, REPO
from e2e.kube import Kube, is_true, observed, table, wait_for

pytestmark = pytest.mark.timeout(900)
CRDS = REPO / "crds"


def crd_file(plural: str) -> dict[str, Any]:
    path = CRDS / f"{plural}.mailwarden.dev.yaml"
    return yaml.safe_load(path.read_text())


def printer_columns(crd: dict[str, Any], wide: bool) -> list[str]:
    version = next(v for v in crd["spec"]["versions"] if v.get("served"))
    columns = [c for c in version.get("additionalPrinterColumns", [])
               if wide or not c.get("priority")]
    return ["NAME"] + [c["name"].upper() for c in columns]


def check_columns(kube: Kube, plural: str, name: str) -> tuple[dict[str, str], dict[str, str]]:
    crd = crd_file(plural)
    live = kube.json("get", "crd", f"{plural}.mailwarden.dev", namespaced=False)
    # The API server holds the CRD from this checkout (defaults it added aside).
    assert printer_columns(live, True) == printer_columns(crd, True)
    rows = {}
    for wide in (False, True):
        text = kube.run("get", plural, *(["-o", "wide"] if wide else [])).stdout
        header = [c for c in table(text)[0]] if table(text) else []
        assert header == printer_columns(crd, wide), text
        row = next((r for r in table(text) if r["NAME"] == name), None)
        assert row, f"{name} missing from `kubectl get {plural}`:\n{text}"
        rows[wide] = row
    return rows[False], rows[True]


def test_spampolicy_becomes_ready_with_the_documented_columns(e2e: E2E) -> None:
    sp = e2e.wait_policy_settled()
    status = sp["status"]
    assert is_true(sp, "PolicyValid") and not is_true(sp, "Degraded")
    assert status["readyReplicas"] >= sp["spec"]["replicas"]["min"]
    row, wide = check_columns(e2e.kube, "spampolicies", e2e.policy)
    print(f"kubectl get spampolicies: {row}; -o wide adds {set(wide) - set(row)}")
    assert row["READY"] == "True"
    assert row["REPLICAS"] == str(status["readyReplicas"])
    assert row["POLICY HASH"] == status["policyHash"]
    assert wide["VALID"] == "True"
    # The short name works too.
    assert e2e.policy in e2e.kube.run("get", "sp").stdout


def test_unsubscribestore_becomes_ready_with_the_documented_columns(e2e: E2E,
                                                                     store_name: str) -> None:
    def ready() -> dict[str, Any] | None:
        store = e2e.kube.get("unsubscribestore", store_name)
        return store if observed(store) and is_true(store, "Ready") else None

    store = wait_for(ready, 600, f"UnsubscribeStore {store_name} to be Ready", interval=2)
    status = store["status"]
    # Embedded SQLite: one pod, storage ready but reported as not highly available.
    assert is_true(store, "StorageReady")
    assert status["highlyAvailable"] is False
    row, wide = check_columns(e2e.kube, "unsubscribestores", store_name)
    print(f"kubectl get unsubscribestores: {row}; -o wide: {wide}")
    assert row["READY"] == "True"
    assert row["REPLICAS"] == str(status["readyReplicas"]) == "1"
    assert row["STORAGE"] == "embedded"
    assert wide["DURABILITY"] == store["spec"].get("durability", "local")
    assert wide["HA"] == "false"
    assert store_name in e2e.kube.run("get", "unsub").stdout


def test_one_kubectl_get_shows_both_kinds_with_their_columns(e2e: E2E,
                                                            store_name: str) -> None:
    """`kubectl get spampolicies,unsubscribestores`, as the README says: one table per kind,
    each with its own printer columns."""
    text = e2e.kube.run("get", "spampolicies,unsubscribestores").stdout
    print(text)
    blocks = [b for b in text.split("\n\n") if b.strip()]
    assert len(blocks) == 2, text
    for block, plural, name in ((blocks[0], "spampolicies", e2e.policy),
                                (blocks[1], "unsubscribestores", store_name)):
        rows = table(block)
        assert list(rows[0]) == printer_columns(crd_file(plural), wide=False), block
        kind = crd_file(plural)["spec"]["names"]["singular"]
        assert f"{kind}.mailwarden.dev/{name}" in [r["NAME"] for r in rows], block


def test_filter_pods_pass_restricted_admission_and_spread_over_nodes(e2e: E2E) -> None:
    e2e.wait_policy_settled()
    ns = e2e.kube.json("get", "namespace", e2e.namespace, namespaced=False)
    # The suite made the namespace enforce it; the pods there passed the API server's check.
    assert ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    pods = e2e.filter_pods()
    nodes = {p["spec"]["nodeName"] for p in pods}
    zones = {}
    for node in nodes:
        labels = e2e.kube.json("get", "node", node, namespaced=False)["metadata"]["labels"]
        zones[node] = labels.get("topology.kubernetes.io/zone")
    print(f"filter pods on nodes/zones: {zones}")
    # Spreading is a soft constraint (ScheduleAnyway), but on three empty workers the
    # scheduler has every reason to honour it.
    assert len(nodes) == len(pods), f"two filter pods share a node: {zones}"
    for pod in pods:
        ctx = pod["spec"]["containers"][0]["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["runAsNonRoot"] is True


def _schema_node(crd: dict[str, Any], path: list[str]) -> dict[str, Any]:
    version = next(v for v in crd["spec"]["versions"] if v.get("served"))
    node = version["schema"]["openAPIV3Schema"]
    for part in path:
        node = node["properties"][part]
    return node


@pytest.mark.parametrize("plural,kind,path", [
    ("spampolicies", "spampolicy", ["spec", "replicas"]),
    ("unsubscribestores", "unsubscribestore", ["spec", "storage"])])
def test_kubectl_explain_documents_the_fields(e2e: E2E, plural: str, kind: str,
                                              path: list[str]) -> None:
    """`kubectl explain` reads the API server's published OpenAPI (built from the CRD's
    structural schema): the field, its type and each child's description are there."""
    node = _schema_node(crd_file(plural), path)
    text = e2e.kube.run("explain", ".".join([kind, *path]), namespaced=False).stdout
    print(text)
    flat = " ".join(text.split())
    assert " ".join(node["description"].split()) in flat
    for name, child in node["properties"].items():
        assert name in text, f"{name} missing from kubectl explain"
        assert " ".join(child["description"].split()) in flat, f"{name}'s description"
