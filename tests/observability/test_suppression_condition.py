"""The SpamPolicy's SuppressionFresh condition tells the truth.

End to end: a real unsubscribe store (embedded SQLite) and two real filter servers started
with `--suppression-store` on loopback; the real operator against the KMock emulator, where
Pod objects of the SpamPolicy point at the filter servers' metrics ports (the emulator runs
no kubelet: this test is the kubelet's stand-in, and only a real cluster shows the operator
reaching pod IPs through the cluster network). The store is killed (the condition goes
False/SuppressionStale and Degraded=True, exported as a metric too), restarted (back to
True), and a pod whose metrics cannot be read makes it Unknown. Plus unit tests of the
summary and of the series the operator exports per condition."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Iterator

import kmock
import pytest

from mailwarden_operator.common import metrics
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.common.kube import CONFIGMAPS, EVENTS, SPAMPOLICIES
from mailwarden_operator.spampolicy.suppression_health import (PODS, PodSuppression, metrics_url,
                                                    read_pod, summarize)
from tests.observability.test_inventory import sample, scrape
from tests.operator.conftest import (Cluster, FakeDeploymentController, OperatorProcess,
                                     condition, example_policy, free_port, model_configmap,
                                     wait_for)
from tests.operator.emulator import VERBS, EmulatorThread
from testkit.filter import Server, mini_policy, write_policy
from testkit.store import StoreProcess

NS = "mail"
NAME = "default"
STALE_AFTER = 1.5


# --- the summary (pure) -------------------------------------------------------------------

def test_summary_of_the_pods_answers() -> None:
    fresh = PodSuppression("a", fresh=1, age=0.4, connected=1)
    stale = PodSuppression("b", fresh=0, age=30, connected=0)
    never = PodSuppression("c", fresh=0, age=1e9, connected=0)
    disabled = PodSuppression("d")  # a filter without --suppression-store: gauges stay 0
    unreadable = PodSuppression("e", error="URLError: refused")
    assert summarize([fresh, fresh], "news")[1:3] == ("True", "AllPodsFresh")
    status, reason, message = summarize([fresh, stale, never, unreadable], "news")[1:]
    assert (status, reason) == ("False", "SuppressionStale")
    assert "2 of 4 ready filter pods answer SUPPRESSION_STALE" in message
    assert "down on 2, 1 never loaded" in message and "1 pods could not be read" in message
    assert summarize([fresh, unreadable], "news")[1:3] == ("Unknown", "MetricsUnreachable")
    assert summarize([fresh, disabled], "news")[1:3] == ("False", "NotFollowingStore")
    assert summarize([], "news")[1:3] == ("Unknown", "NoReadyPods")
    # the message does not change while the state does not (no status write per resync)
    older = PodSuppression("b", fresh=0, age=95, connected=0)
    assert summarize([fresh, stale], "news") == summarize([fresh, older], "news")


def test_the_metrics_url_is_the_filter_containers_metrics_port() -> None:
    pod = {"metadata": {"name": "p"}, "status": {"podIP": "10.1.2.3"},
           "spec": {"containers": [{"name": "sidecar", "ports": [
               {"name": "metrics", "containerPort": 1}]},
               {"name": naming.CONTAINER_NAME, "ports": [
                   {"name": "grpc", "containerPort": 9090},
                   {"name": "metrics", "containerPort": 9091}]}]}}
    assert metrics_url(pod) == "http://10.1.2.3:9091/metrics"
    pod["status"]["podIP"] = "fd00::7"
    assert metrics_url(pod) == "http://[fd00::7]:9091/metrics"
    assert read_pod(pod, fetch=lambda url: "garbage {").error is not None


def test_condition_series_follow_the_conditions() -> None:
    metrics.set_conditions("t", "p", [{"type": "Ready", "status": "True"},
                                      {"type": "SuppressionFresh", "status": "False"}])
    value = metrics.SPAMPOLICY_CONDITION.labels
    assert value("t", "p", "SuppressionFresh", "False")._value.get() == 1
    assert value("t", "p", "SuppressionFresh", "True")._value.get() == 0
    metrics.set_conditions("t", "p", [{"type": "Ready", "status": "True"}])
    exported = {s.labels["condition"] for m in metrics.SPAMPOLICY_CONDITION.collect()
                for s in m.samples if s.labels["name"] == "p"}
    assert exported == {"Ready"}  # the reference was removed: SuppressionFresh is gone
    metrics.forget("t", "p")
    assert not [s for m in metrics.SPAMPOLICY_CONDITION.collect() for s in m.samples
                if s.labels["name"] == "p"]


# --- end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("suppression-condition")


@pytest.fixture(scope="module")
def store(workdir: Path) -> Iterator[StoreProcess]:
    proc = StoreProcess(workdir, ["--store", "sqlite", "--sqlite-path",
                                  str(workdir / "store.db"), "--no-one-click"])
    try:
        yield proc.start()
    finally:
        proc.close()


@pytest.fixture(scope="module")
def filters(workdir: Path, store: StoreProcess) -> Iterator[list[Server]]:
    policy_dir = workdir / "policy"
    write_policy(policy_dir, mini_policy(1))
    started = [Server(workdir, policy_dir, ["--suppression-store", store.target,
                                            "--suppression-stale-after", str(STALE_AFTER),
                                            "--drain-seconds", "0"], workers=1)
               for _ in range(2)]
    try:
        for server in started:
            server.wait_serving()
        yield started
    finally:
        for server in started:
            server.kill()


def pod_object(index: int, metrics_port: int) -> dict[str, Any]:
    """What the kubelet would report for a ready filter pod of the SpamPolicy."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{NAME}-filter-{index}", "namespace": NS,
                         "labels": naming.selector_labels(NAME)},
            "spec": {"containers": [{"name": naming.CONTAINER_NAME, "ports": [
                {"name": "grpc", "containerPort": naming.GRPC_PORT},
                {"name": "metrics", "containerPort": metrics_port}]}]},
            "status": {"phase": "Running", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture(scope="module")
def cluster(filters: list[Server]) -> Iterator[Cluster]:
    with EmulatorThread() as emulator:
        emulator.call(lambda: emulator.emulator.resources.__setitem__(
            "v1/pods", kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=VERBS)))
        cluster = Cluster(emulator)
        for index, server in enumerate(filters):
            cluster.kube.create(PODS, NS, pod_object(index, server.metrics_port))
        yield cluster


@pytest.fixture(scope="module")
def operator(cluster: Cluster, workdir: Path) -> Iterator[OperatorProcess]:
    with FakeDeploymentController(cluster.kube):
        proc = OperatorProcess(cluster, workdir, resync=1.0)
        try:
            yield proc.start()
        finally:
            proc.stop()


def _condition(cluster: Cluster, ctype: str) -> dict[str, Any] | None:
    return condition(cluster.kube.get(SPAMPOLICIES, NS, NAME), ctype)


def _is(cluster: Cluster, ctype: str, status: str, reason: str) -> bool:
    found = _condition(cluster, ctype)
    return bool(found) and (found["status"], found["reason"]) == (status, reason)


def _exported(operator: OperatorProcess, ctype: str, status: str) -> float | None:
    return sample(scrape(operator.metrics_port), "mailwarden_operator_spampolicy_condition",
                  {"namespace": NS, "name": NAME, "condition": ctype, "status": status})


def test_the_condition_follows_the_filter_pods(cluster: Cluster, operator: OperatorProcess,
                                               store: StoreProcess,
                                               filters: list[Server]) -> None:
    cluster.kube.create(CONFIGMAPS, NS, model_configmap(NS))
    cluster.kube.create(SPAMPOLICIES, NS, example_policy(
        NS, NAME, unsubscribeStoreRef={"name": "news"}))
    wait_for(lambda: _is(cluster, "SuppressionFresh", "True", "AllPodsFresh"), 90,
             "SuppressionFresh=True")
    assert _is(cluster, "Degraded", "False", "AsExpected")
    assert "all 2 ready filter pods" in _condition(cluster, "SuppressionFresh")["message"]
    wait_for(lambda: _exported(operator, "SuppressionFresh", "True") == 1, 30,
             "the condition series")

    store.kill9()  # the store is gone: the pods' caches go stale after STALE_AFTER
    # the two pods cross their bound a moment apart: "1 of 2", then "2 of 2"
    wait_for(lambda: _is(cluster, "SuppressionFresh", "False", "SuppressionStale")
             and _condition(cluster, "SuppressionFresh")["message"].startswith(
                 "2 of 2 ready filter pods answer SUPPRESSION_STALE"), 60,
             "SuppressionFresh=False on both pods")
    assert _is(cluster, "Degraded", "True", "SuppressionStale")
    assert _is(cluster, "Ready", "True", "PolicyLive")  # classification goes on
    wait_for(lambda: _exported(operator, "SuppressionFresh", "False") == 1, 30,
             "the condition series to say False")
    events = [e for e in cluster.kube.list(EVENTS, NS)
              if e.get("reason") == "SuppressionFreshSuppressionStale"]
    assert events and events[0]["type"] == "Warning"

    store.start()  # same database and port: the caches resume and turn fresh
    wait_for(lambda: _is(cluster, "SuppressionFresh", "True", "AllPodsFresh"), 60,
             "SuppressionFresh=True again")
    assert _is(cluster, "Degraded", "False", "AsExpected")

    # a ready pod whose metrics cannot be read: the operator does not vouch for it
    cluster.kube.create(PODS, NS, pod_object(9, free_port()))
    wait_for(lambda: _is(cluster, "SuppressionFresh", "Unknown", "MetricsUnreachable"), 60,
             "SuppressionFresh=Unknown")
    assert f"{NAME}-filter-9" in _condition(cluster, "SuppressionFresh")["message"]


def test_a_standby_replica_drops_the_per_policy_series() -> None:
    """A replica that is not the active peer (two resync rounds in a row) stops exporting
    per-policy series, so alerts never read what it saw while it was active."""
    import time

    from mailwarden_operator.resync import Resync

    class Standby:  # the peering object lists a live peer with a higher priority
        def get(self, *args):
            now = datetime.datetime.now(datetime.UTC)
            return {"status": {"other": {"priority": 10, "lastseen": now.isoformat(),
                                         "lifetime": 60},
                               "me": {"priority": 1, "lastseen": now.isoformat(),
                                      "lifetime": 60}}}

    metrics.POLICY_VALID.labels("t", "standby").set(1)
    metrics.set_conditions("t", "standby", [{"type": "Ready", "status": "True"}])
    resync = Resync(None, Standby(), interval=0.05, namespaces=[], peering="mailwarden",
                    identity="me", priority=1)
    resync.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and list(metrics.POLICY_VALID.collect())[0].samples:
            time.sleep(0.05)
    finally:
        resync.stop()
        resync.join(5)
    assert not list(metrics.POLICY_VALID.collect())[0].samples
    assert not list(metrics.SPAMPOLICY_CONDITION.collect())[0].samples
