"""Which replica runs the resync: the same rule kopf peering applies."""

from __future__ import annotations

import datetime

from mailwarden_operator.main import startup_priority
from mailwarden_operator.resync import is_active

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def peer(priority: int, seconds_ago: float, lifetime: int = 15) -> dict:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lastseen": seen.isoformat(), "lifetime": lifetime}


def test_the_live_peer_with_the_highest_priority_is_active():
    body = {"status": {"a": peer(200, 1), "b": peer(100, 1)}}
    assert is_active(body, "a", 200, NOW)
    assert not is_active(body, "b", 100, NOW)


def test_a_dead_peer_does_not_block_and_equal_priorities_block_both():
    assert is_active({"status": {"a": peer(200, 60), "b": peer(100, 1)}}, "b", 100, NOW)
    tie = {"status": {"a": peer(100, 1), "b": peer(100, 1)}}
    assert not is_active(tie, "a", 100, NOW) and not is_active(tie, "b", 100, NOW)


def test_not_yet_announced_or_no_peering_object_is_inactive():
    assert not is_active({"status": {"a": peer(200, 1)}}, "b", 300, NOW)
    assert not is_active(None, "b", 300, NOW)


def test_earlier_started_replicas_get_higher_priorities():
    assert startup_priority(1_700_000_000.0) > startup_priority(1_700_000_001.0) > 0


def test_a_missing_peering_object_is_reported(caplog) -> None:
    from mailwarden_operator.resync import Resync

    class NoPeering:
        def get(self, *args):
            return None

    resync = Resync(None, NoPeering(), interval=60, namespaces=[], peering="mailwarden",
                    identity="me", priority=1)
    with caplog.at_level("ERROR"):
        assert resync.active() is False
    assert "ClusterKopfPeering mailwarden does not exist" in caplog.text
    assert "--standalone" in caplog.text


def test_a_missing_store_crd_does_not_stop_the_spampolicy_resync(caplog) -> None:
    """After `helm upgrade` (which adds no new CRDs) listing UnsubscribeStores answers 404:
    SpamPolicies are still resynced, and the missing CRD is reported once."""
    from mailwarden_operator.common.kube import KubeError
    from mailwarden_operator.resync import Resync

    class Kube:
        def list(self, resource, namespace):
            if resource.plural == "unsubscribestores":
                raise KubeError(404, "GET /apis/mailwarden.dev/v1alpha1/unsubscribestores: 404")
            return [{"metadata": {"namespace": "ns", "name": "p"}}]

    class Recorder:
        def __init__(self) -> None:
            self.calls = []

        def reconcile(self, namespace, name, trigger):
            self.calls.append((namespace, name, trigger))

    policies, stores = Recorder(), Recorder()
    resync = Resync(policies, Kube(), interval=60, namespaces=[], peering=None,
                    identity="me", priority=1, store_reconciler=stores)
    with caplog.at_level("ERROR"):
        resync.resync_all()
        resync.resync_all()
    assert policies.calls == [("ns", "p", "resync")] * 2 and stores.calls == []
    assert caplog.text.count("is the CRD installed?") == 1


def test_canaries_are_checked_between_full_resyncs() -> None:
    """With --canary-check-seconds below --resync-seconds, the rounds in between reconcile
    only the SpamPolicies with a canary in progress (their guards bound the rollback), as
    the reconciler knows them: without listing anything."""
    import threading

    from mailwarden_operator.resync import Resync

    def policy(name: str, status: dict) -> dict:
        return {"metadata": {"namespace": "ns", "name": name}, "status": status}

    class Kube:
        def list(self, resource, namespace):
            if resource.plural != "spampolicies":
                return []
            return [policy("plain", {}), policy("canary", {"canary": {"step": 0}})]

    calls: list[tuple[str, str]] = []
    done = threading.Event()

    class Reconciler:
        def canaries(self) -> list[tuple[str, str]]:
            return [("ns", "canary")]

        def reconcile(self, namespace: str, name: str, *, trigger: str) -> None:
            calls.append((name, trigger))
            if len(calls) >= 4:
                done.set()

    resync = Resync(Reconciler(), Kube(), interval=0.5, namespaces=[], peering=None,
                    identity="me", priority=1, canary_interval=0.1)
    resync.start()
    try:
        assert done.wait(5)
    finally:
        resync.stop()
    # Canary checks reconcile the canary only; full resyncs both.
    assert calls.count(("canary", "canary")) >= 2
    assert ("plain", "canary") not in calls
