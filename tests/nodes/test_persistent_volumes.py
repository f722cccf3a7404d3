"""A PersistentVolumeClaim on the process nodes: the default StorageClass (no provisioner,
WaitForFirstConsumer) and local PersistentVolumes with node affinity that e2e/nodes/storage.py
creates; the real scheduler picks a node whose volume fits, the real PV controller binds the
claim, and the node agent mounts the volume's directory group-owned by the pod's fsGroup, so
a non-root pod writes to it and a later pod on the same claim reads what it wrote."""

from __future__ import annotations

from kubernetes import client

from tests.nodes.conftest import Cluster, wait_for
from tests.nodes.test_nodes import exec_py, pod, python_container, ready

SLEEP = "import time; time.sleep(3600)"


def claim_pod(name: str) -> dict:
    return pod(name, [python_container("c", SLEEP, volumeMounts=[
        {"name": "data", "mountPath": "/data"}])],
        securityContext={"fsGroup": 65532, "runAsNonRoot": True},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}])


def test_a_claim_binds_a_local_volume_and_keeps_data_across_pods(cluster: Cluster,
                                                                   namespace: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "data"},
                   "spec": {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}}}}, namespace)
    # WaitForFirstConsumer: nothing is bound before a pod needs the claim.
    claim = cluster.core.read_namespaced_persistent_volume_claim("data", namespace)
    assert claim.spec.storage_class_name == "standard"  # the default class, by admission
    assert claim.status.phase == "Pending"

    cluster.apply(claim_pod("writer"), namespace)
    writer = wait_for(lambda: (lambda p: p if ready(p) else None)(
        cluster.core.read_namespaced_pod("writer", namespace)), 90, "the writer pod")
    claim = cluster.core.read_namespaced_persistent_volume_claim("data", namespace)
    volume = cluster.core.read_persistent_volume(claim.spec.volume_name)
    assert claim.status.phase == "Bound" and volume.spec.local is not None
    # The scheduler put the pod on the node the volume is local to.
    (term,) = volume.spec.node_affinity.required.node_selector_terms
    assert term.match_expressions[0].values == [writer.spec.node_name]
    out = exec_py(cluster, namespace, "writer", "import os\n"
                  "open('/data/note', 'w').write('kept')\n"
                  "print(os.getuid(), os.stat('/data').st_gid)")
    assert out.split() == ["65532", "65532"]

    cluster.core.delete_namespaced_pod("writer", namespace, grace_period_seconds=0)
    wait_for(lambda: not cluster.core.list_namespaced_pod(
        namespace, field_selector="metadata.name=writer").items, 60, "the writer to go")
    cluster.apply(claim_pod("reader"), namespace)
    reader = wait_for(lambda: (lambda p: p if ready(p) else None)(
        cluster.core.read_namespaced_pod("reader", namespace)), 90, "the reader pod")
    assert reader.spec.node_name == writer.spec.node_name
    assert exec_py(cluster, namespace, "reader", "print(open('/data/note').read())").strip() \
        == "kept"


def test_a_claim_nothing_can_satisfy_leaves_the_pod_pending(cluster: Cluster,
                                                             namespace: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": "huge"},
                   "spec": {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Ti"}}}}, namespace)
    manifest = claim_pod("waiting")
    manifest["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "huge"
    cluster.apply(manifest, namespace)

    def unschedulable() -> client.V1PodCondition | None:
        p = cluster.core.read_namespaced_pod("waiting", namespace)
        return next((c for c in p.status.conditions or []
                     if c.type == "PodScheduled" and c.status == "False"), None)

    cond = wait_for(unschedulable, 60, "the scheduler to report the pod unschedulable")
    assert "persistentvolumeclaim" in (cond.message or "").lower() or \
        "volume" in (cond.message or "").lower(), cond.message
