"""The kind suite's helpers that need no cluster: parsing what kubectl prints, the client
Job manifests (valid Kubernetes objects that pass the `restricted` Pod Security level the
e2e namespace enforces), and reading the load pods' logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e import jobs
from e2e.kube import metric, pod_ready, table
from tests.operator.k8s_schemas import validate_k8s

REPO = Path(__file__).resolve().parents[2]


def test_table_splits_columns_whose_names_hold_spaces() -> None:
    text = ("NAME      READY   REPLICAS   POLICY HASH        AGE\n"
            "default   True    2          b90f28a44713473b   5m12s\n"
            "other     False   0                             1s\n")
    rows = table(text)
    assert rows[0] == {"NAME": "default", "READY": "True", "REPLICAS": "2",
                       "POLICY HASH": "b90f28a44713473b", "AGE": "5m12s"}
    assert rows[1]["POLICY HASH"] == "" and rows[1]["AGE"] == "1s"
    assert list(rows[0]) == ["NAME", "READY", "REPLICAS", "POLICY HASH", "AGE"]


@pytest.mark.parametrize("avoid_nodes", [(), ("node-b",)])
def test_client_jobs_are_valid_and_restricted(avoid_nodes: tuple[str, ...]) -> None:
    job = jobs.job_manifest("load-abc123", "mailwarden:e2e",
                            ["python", "/e2e/bin/mwclient.py", "load"], parallelism=2,
                            avoid_nodes=avoid_nodes)
    validate_k8s(job)
    pod = job["spec"]["template"]["spec"]
    # The restricted level (Kubernetes Pod Security Standards), field by field.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert not any("hostPath" in v for v in pod["volumes"])
    assert job["spec"]["template"]["metadata"]["labels"] == {"e2e-job": "load-abc123"}
    # Nothing assumes a control-plane node that takes pods; avoided nodes are excluded.
    assert "nodeSelector" not in pod and "tolerations" not in pod
    terms = (pod.get("affinity") or {}).get("nodeAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    assert terms == ([{"matchExpressions": [{"key": "kubernetes.io/hostname",
                                             "operator": "NotIn", "values": ["node-b"]}]}]
                     if avoid_nodes else [])
    # The script the Jobs run is the one shipped in the ConfigMap.
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["client"] == "/e2e/bin" and jobs.CLIENT_SCRIPT.is_file()


def test_load_logs_are_read_per_pod() -> None:
    progress = {"event": "progress", "elapsed": 2.0, "failed": 0, "hashes": {}, "ok": 41}
    text = "\n".join([
        "[pod/load-1-aaaaa/client] " + json.dumps(progress, sort_keys=True),
        "[pod/load-1-bbbbb/client] " + json.dumps({**progress, "ok": 7}, sort_keys=True),
        "[pod/load-1-aaaaa/client] " + json.dumps({**progress, "ok": 90}, sort_keys=True),
        "[pod/load-1-aaaaa/client] " + jobs.SUMMARY_PREFIX + json.dumps({"ok": 95}),
    ])
    assert jobs.progress_by_pod(text) == {"[pod/load-1-aaaaa/client]": 90,
                                          "[pod/load-1-bbbbb/client]": 7}
    assert jobs.summaries(text) == [{"ok": 95}]


def test_metric_sums_matching_samples() -> None:
    text = ('# HELP mailwarden_filter_requests_total Filter RPCs\n'
            'mailwarden_filter_requests_total{code="OK",method="Classify"} 12.0\n'
            'mailwarden_filter_requests_total{code="UNAVAILABLE",method="Classify"} 3.0\n'
            'mailwarden_filter_requests_total_created{code="OK",method="Classify"} 1.7e9\n')
    assert metric(text, "mailwarden_filter_requests_total", method="Classify", code="OK") == 12
    assert metric(text, "mailwarden_filter_requests_total") == 15


def test_pod_ready_ignores_terminating_pods() -> None:
    ready = {"metadata": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert pod_ready(ready)
    assert not pod_ready({**ready, "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
    assert not pod_ready({"metadata": {}, "status": {}})
