"""Classify through the headless Service, from inside the cluster, with the image's own
`mailwarden classify` — and the answers are exactly what the live policy gives locally."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import E2E
from e2e.jobs import LoadRun, describe_load, run_job, summaries
from e2e.kube import metric, wait_for
from filter_server.auth.gather import Evidence
from filter_server.auth.resolver import Nameserver
from filter_server.auth.service import Authenticator
from filter_server.engine.compiled import CompiledPolicy, Envelope
from filter_server.policy.auth_rules import ALL_RULES
from filter_server.policy.loader import load_policy_dir
from filter_server.server.authentication import gather_for
from mailwarden_local.projection import project
from mailwarden_operator.spampolicy import naming

pytestmark = pytest.mark.timeout(900)


def live_policy(e2e: E2E, tmp_path: Path) -> tuple[str, CompiledPolicy]:
    """The policy ConfigMap the pods mount, laid out as the kubelet does, compiled here."""
    sp = e2e.wait_policy_settled()
    configmap = e2e.kube.json("get", "configmap", sp["status"]["policyConfigMap"])
    files = {k: v.encode() for k, v in (configmap.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (configmap.get("binaryData") or {}).items()})
    project(tmp_path / "policy", files)
    loaded = load_policy_dir(tmp_path / "policy")
    assert loaded.hash == sp["status"]["policyHash"]
    return loaded.hash, CompiledPolicy(loaded)


class _NoMetrics:
    def dns_lookup(self, outcome: str, seconds: float) -> None:
        pass

    def gathered(self, seconds: float, temperrors: list[str]) -> None:
        pass


def local_evidence(e2e: E2E, compiled: CompiledPolicy,
                   raw: dict[str, bytes]) -> dict[str, Evidence | None] | None:
    """What sender authentication finds for each message, asking the cluster DNS as the
    filter pods do (their nameserver), with the filter server's own gathering code and an
    empty envelope as `mailwarden classify` sends. None when this machine cannot query the
    cluster DNS."""
    if not compiled.auth.enabled:
        return {name: None for name in raw}
    if e2e.cluster.dns_server is None:
        return None
    authenticator = Authenticator(_NoMetrics(),
                                  system_servers=[Nameserver.parse(e2e.cluster.dns_server)])
    try:
        return {name: gather_for(authenticator, compiled, message, Envelope(), 0, "", None)
                for name, message in raw.items()}
    finally:
        authenticator.close()


def test_headless_service_resolves_to_every_ready_filter_pod(e2e: E2E) -> None:
    e2e.wait_policy_settled()
    output = run_job(e2e.kube, e2e.image, "resolve",
                     ["python", "/e2e/bin/mwclient.py", "resolve", e2e.headless_host])
    addresses = set(summaries(output)[0]["addresses"])
    expected = {f"{p['status']['podIP']}:{naming.GRPC_PORT}" for p in e2e.filter_pods()}
    assert addresses == expected


def test_classify_through_the_headless_service_matches_the_live_policy(
        e2e: E2E, tmp_path: Path) -> None:
    policy_hash, compiled = live_policy(e2e, tmp_path)
    messages = sorted(e2e.kube.json("get", "configmap", "e2e-messages")["binaryData"])
    output = run_job(e2e.kube, e2e.image, "classify",
                     ["mailwarden", "classify", "--json", "--target", e2e.target,
                      "--deadline", "20", *[f"/e2e/messages/{m}" for m in messages]])
    verdicts = {Path(v["file"]).name: v for v in
                (json.loads(line[line.find("{"):]) for line in output.splitlines()
                 if line.find("{") >= 0 and '"action"' in line)}
    assert sorted(verdicts) == messages, output
    raw = {name: base64.b64decode(value) for name, value in
           e2e.kube.json("get", "configmap", "e2e-messages")["binaryData"].items()}
    evidence = local_evidence(e2e, compiled, raw)
    actions: dict[str, int] = {}
    auth_hits: dict[str, int] = {}
    for name, verdict in verdicts.items():
        assert verdict["policy_hash"] == policy_hash
        # `mailwarden classify` without envelope flags sends an empty envelope, as here.
        if evidence is None:
            # No way to ask the cluster DNS from here (kind): what authentication added
            # is left out, everything else must agree.
            local = compiled.classify(raw[name], Envelope())
            found = [h for h in verdict["hits"] if h["name"] not in ALL_RULES]
            added = sum(h["score"] for h in verdict["hits"] if h["name"] in ALL_RULES)
            assert verdict["score"] == pytest.approx(local.score + added, abs=1e-3), \
                (name, verdict)
        else:
            local = compiled.classify(raw[name], Envelope(), evidence=evidence[name])
            found = verdict["hits"]
            assert verdict["action"] == local.action, (name, verdict, local)
            assert verdict["score"] == pytest.approx(local.score, abs=1e-3), (name, verdict)
            assert verdict["authentication_results"] == local.authentication_results, name
        assert sorted(h["name"] for h in found) == sorted(h.name for h in local.hits), name
        actions[verdict["action"]] = actions.get(verdict["action"], 0) + 1
        for hit in verdict["hits"]:
            if hit["name"] in ALL_RULES:
                auth_hits[hit["name"]] = auth_hits.get(hit["name"], 0) + 1
    print(f"{len(verdicts)} held-out messages classified in the cluster, as locally "
          f"({'with' if evidence is not None else 'without'} the cluster DNS's answers for "
          f"sender authentication): {actions}; authentication hits {auth_hits}")


def _served(e2e: E2E, pod: dict[str, Any]) -> float:
    text = e2e.kube.raw(f"/api/v1/namespaces/{e2e.namespace}/pods/"
                        f"{pod['metadata']['name']}:{naming.METRICS_PORT}/proxy/metrics")
    return metric(text, "mailwarden_filter_requests_total", method="Classify", code="OK")


def test_calls_are_balanced_over_every_filter_pod(e2e: E2E) -> None:
    """Per-request round-robin over the headless Service: every ready pod answers calls
    (counted by each pod's own /metrics, read through the API server's pod proxy)."""
    e2e.wait_policy_settled()
    pods = e2e.filter_pods()
    before = {p["metadata"]["name"]: _served(e2e, p) for p in pods}
    load = LoadRun(e2e.kube, e2e.image, e2e.target, threads=2, rate=20).start()
    try:
        wait_for(lambda: all(_served(e2e, p) > before[p["metadata"]["name"]] for p in pods),
                 120, "every filter pod to answer calls", interval=3)
    finally:
        summary = load.stop()
    after = {p["metadata"]["name"]: _served(e2e, p) - before[p["metadata"]["name"]]
             for p in pods}
    print(f"calls per pod: {after}; {describe_load(summary)}")
    assert summary["failed"] == 0, summary["failures"]
