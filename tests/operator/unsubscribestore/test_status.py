"""UnsubscribeStore status and conditions as pure functions of what a reconcile observed,
and the SpamPolicy's SuppressionReady condition."""

from __future__ import annotations

import datetime

from mailwarden_operator.common.status import Rollout, status_patch
from mailwarden_operator.spampolicy.status import Observation, compute_status
from mailwarden_operator.unsubscribestore.status import (StoreObservation, compute_store_status,
                                                         is_ready, ready_message)

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
LATER = T0 + datetime.timedelta(seconds=30)


def conditions(status: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def obs(**changes) -> StoreObservation:
    base = dict(generation=1, storage="postgres", durability="replicated", min_replicas=2,
                deployment_exists=True, signing_key_secret="s-signing-key",
                endpoints={"grpc": "s-unsubscribe.ns.svc:50061"},
                rollout=Rollout("c1", True, desired=2, replicas=2, updated=2, ready=2,
                                available=2))
    base.update(changes)
    return StoreObservation(**base)


STARTING = Rollout("c1", False, desired=2, replicas=2, updated=2, ready=0, available=0)


def test_a_new_store_starts_quietly_then_reports_ready_and_highly_available() -> None:
    starting, events = compute_store_status(None, obs(rollout=STARTING), T0)
    assert conditions(starting) == {"Ready": ("False", "StoreNotReady"),
                                    "Progressing": ("True", "RollingOut"),
                                    "StorageReady": ("False", "StoreNotReady"),
                                    "Degraded": ("False", "AsExpected"),
                                    "ApplyFailed": ("False", "Applied")}
    assert all(e.type == "Normal" for e in events), events  # starting is not a warning
    assert starting["highlyAvailable"] is False
    ready, events = compute_store_status(starting, obs(), LATER)
    assert conditions(ready) == {"Ready": ("True", "Serving"),
                                 "Progressing": ("False", "RolloutComplete"),
                                 "StorageReady": ("True", "StoreReady"),
                                 "Degraded": ("False", "AsExpected"),
                                 "ApplyFailed": ("False", "Applied")}
    assert ready["highlyAvailable"] is True
    assert ready["configHash"] == "c1" and ready["signingKeySecret"] == "s-signing-key"
    assert ready["endpoints"] == {"grpc": "s-unsubscribe.ns.svc:50061"}
    assert (ready["storage"], ready["durability"]) == ("postgres", "replicated")
    assert {e.reason for e in events} >= {"ReadyServing", "StorageReadyStoreReady"}
    assert is_ready(ready) and not is_ready(starting)
    # Nothing changed: nothing to write, no Event.
    again, events = compute_store_status(ready, obs(), LATER + datetime.timedelta(minutes=1))
    assert status_patch(ready, again) == {} and events == []


def test_losing_the_database_is_a_warning_and_degrades_the_store() -> None:
    ready, _ = compute_store_status(None, obs(), T0)
    lost, events = compute_store_status(ready, obs(rollout=Rollout(
        "c1", False, desired=2, replicas=2, updated=2, ready=0, available=0)), LATER)
    assert conditions(lost)["StorageReady"] == ("False", "StoreNotReady")
    assert conditions(lost)["Ready"] == ("False", "StoreNotReady")
    assert conditions(lost)["Degraded"] == ("True", "StoreNotReady")
    message = dict((c["type"], c["message"]) for c in lost["conditions"])["StorageReady"]
    assert "pg_monitor" in message and "mailwarden unsubscribe status" in message
    assert {e.reason: e.type for e in events}["StorageReadyStoreNotReady"] == "Warning"
    assert not is_ready(lost) and "pg_monitor" in ready_message(lost)
    # It stays Degraded until a pod is ready again.
    still, _ = compute_store_status(lost, obs(rollout=STARTING), LATER)
    assert conditions(still)["Degraded"] == ("True", "StoreNotReady")
    back, _ = compute_store_status(still, obs(), LATER)
    assert conditions(back)["Degraded"] == ("False", "AsExpected")


def test_embedded_storage_is_never_highly_available_and_says_so() -> None:
    status, _ = compute_store_status(None, obs(
        storage="embedded", durability="local", min_replicas=1,
        embedded_volume="persistentVolumeClaim",
        rollout=Rollout("c1", True, 1, 1, 1, 1, 1)), T0)
    assert status["highlyAvailable"] is False
    storage = next(c for c in status["conditions"] if c["type"] == "StorageReady")
    assert (storage["status"], storage["reason"]) == ("True", "EmbeddedNotHighlyAvailable")
    assert "not highly available" in storage["message"]
    assert conditions(status)["Ready"] == ("True", "Serving")
    throwaway, _ = compute_store_status(None, obs(
        storage="embedded", durability="local", min_replicas=1, embedded_volume="emptyDir",
        rollout=Rollout("c1", True, 1, 1, 1, 1, 1)), T0)
    assert "lost when the pod goes" in next(
        c for c in throwaway["conditions"] if c["type"] == "StorageReady")["message"]
    single, _ = compute_store_status(None, obs(rollout=Rollout("c1", True, 1, 1, 1, 1, 1)),
                                     T0)
    assert single["highlyAvailable"] is False  # PostgreSQL, but one pod


def test_a_missing_secret_stops_the_rollout_and_leaves_the_old_pods_serving() -> None:
    fresh, events = compute_store_status(None, obs(
        deployment_exists=False, rollout=Rollout(None, False),
        problem_reason="DSNSecretNotFound",
        problem_message="Secret pg (storage.postgres.dsnSecretRef) not found"), T0)
    assert conditions(fresh) == {"Ready": ("False", "DSNSecretNotFound"),
                                 "Progressing": ("False", "DSNSecretNotFound"),
                                 "StorageReady": ("False", "DSNSecretNotFound"),
                                 "Degraded": ("True", "DSNSecretNotFound"),
                                 "ApplyFailed": ("False", "Applied")}
    assert {e.reason: e.type for e in events}["DegradedDSNSecretNotFound"] == "Warning"
    serving, _ = compute_store_status(None, obs(
        problem_reason="SigningKeyInvalid", problem_message="Secret k: too short"), T0)
    assert conditions(serving)["Ready"] == ("True", "Serving")
    assert conditions(serving)["Degraded"] == ("True", "SigningKeyInvalid")
    assert "previous configuration keeps serving" in next(
        c for c in serving["conditions"] if c["type"] == "Degraded")["message"]


def test_a_stuck_rollout_and_too_few_pods_are_degraded() -> None:
    stuck, _ = compute_store_status(None, obs(
        rollout_stuck=True, rollout=Rollout("c2", False, 2, 3, 1, 2, 2)), T0)
    assert conditions(stuck)["Degraded"] == ("True", "RolloutStuck")
    assert conditions(stuck)["Ready"] == ("True", "Serving")  # the old pods serve
    thin, _ = compute_store_status(None, obs(min_replicas=3), T0)
    assert conditions(thin)["Degraded"] == ("True", "BelowMinReplicas")


def test_removed_fields_are_removed_from_status() -> None:
    with_url, _ = compute_store_status(None, obs(endpoints={
        "grpc": "g", "publicBaseURL": "https://u"}), T0)
    without, _ = compute_store_status(with_url, obs(
        endpoints={"grpc": "g"}, signing_key_secret=None), T0)
    patch = status_patch(with_url, without)
    assert patch["endpoints"]["publicBaseURL"] is None  # a merge patch deletes it
    assert patch["signingKeySecret"] is None


def test_the_fingerprint_key_is_named_once_checked_and_kept_when_not_reached() -> None:
    """SpamPolicies mount what status names: only a checked key, dropped when it becomes
    unusable, and kept when a reconcile stopped before checking it (another Secret is
    missing), so such a problem does not roll the filter pods off the key."""
    checked, _ = compute_store_status(None, obs(
        fingerprint_key=("s-fingerprint-key", "41"), fingerprint_key_known=True), T0)
    assert (checked["fingerprintKeySecret"], checked["fingerprintKeyVersion"]) == \
        ("s-fingerprint-key", "41")
    not_reached, _ = compute_store_status(checked, obs(problem_reason="DSNSecretNotFound",
                                                       problem_message="m"), LATER)
    assert "fingerprintKeySecret" not in status_patch(checked, not_reached)
    unusable, _ = compute_store_status(checked, obs(
        fingerprint_key=None, fingerprint_key_known=True,
        problem_reason="FingerprintKeyInvalid", problem_message="m"), LATER)
    patch = status_patch(checked, unusable)
    assert patch["fingerprintKeySecret"] is None and patch["fingerprintKeyVersion"] is None


def test_suppression_ready_is_informational_on_the_spampolicy() -> None:
    live = Rollout("h1", True, desired=2, replicas=2, updated=2, ready=2, available=2)
    status, events = compute_status(None, Observation(
        generation=1, min_replicas=2, bundle_hash="h1", rollout=live,
        suppression=("SuppressionReady", "False", "StoreNotFound", "store s not found"),
        suppression_store="s-unsubscribe.ns.svc:50061"), T0)
    assert conditions(status)["SuppressionReady"] == ("False", "StoreNotFound")
    assert conditions(status)["Ready"] == ("True", "PolicyLive")  # classification goes on
    assert conditions(status)["Degraded"] == ("False", "AsExpected")
    assert status["suppressionStore"] == "s-unsubscribe.ns.svc:50061"
    assert {e.reason: e.type for e in events}["SuppressionReadyStoreNotFound"] == "Warning"
    # Dropping the reference drops the condition and the field.
    plain, _ = compute_status(status, Observation(generation=2, min_replicas=2,
                                                  bundle_hash="h1", rollout=live), T0)
    assert "SuppressionReady" not in conditions(plain)
    assert status_patch(status, plain)["suppressionStore"] is None
