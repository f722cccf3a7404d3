"""Status of an UnsubscribeStore, computed as a pure function of what a reconcile observed.

- StorageReady — at least one store pod passes its readiness probe (`/readyz`), which the
  server answers 200 only while its store is Ready: database reachable, schema current, and
  for `durability: replicated` a synchronous standby in sync. For embedded storage the
  message says it is a single, not highly available replica.
- Ready — the store serves: a ready pod exists (during a rollout the previous pods serve).
- Progressing — True while a configuration change rolls out.
- Degraded — something needs attention: a configuration problem (a missing Secret: nothing
  is changed and any previous pods keep serving), a stuck rollout, or fewer ready pods than
  `replicas.min`.

The operator cannot see *why* a pod is not ready (that is in the pod's log and in the
server's GetStatus); the messages say where to look.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from mailwarden_operator.common.backoff import ApplyFailure, apply_condition, quiet_transitions
from mailwarden_operator.common.status import Rollout, Transition, build_conditions

# Configuration problems found before rendering; storage-related ones also make
# StorageReady False.
STORAGE_PROBLEMS = {"DSNSecretNotFound", "DSNSecretKeyMissing"}
NOT_READY_HINT = ("the database is unreachable, its schema is not migrated, or durability "
                  "replicated is not met (no synchronous standby in sync, or the database "
                  "role lacks pg_monitor); the store pods' log and `mailwarden unsubscribe "
                  "status` give the reason")


@dataclass(frozen=True)
class StoreObservation:
    generation: int | None
    storage: str                       # postgres | embedded
    durability: str                    # local | replicated
    min_replicas: int
    embedded_volume: str | None = None  # persistentVolumeClaim | emptyDir
    problem_reason: str | None = None  # a configuration problem: nothing was applied
    problem_message: str | None = None
    deployment_exists: bool = False
    rollout: Rollout = field(default_factory=lambda: Rollout(None, False))
    rollout_stuck: bool = False        # the Deployment reports ProgressDeadlineExceeded
    signing_key_secret: str | None = None
    # The fingerprint-key Secret's (name, resourceVersion) as checked by this reconcile;
    # None: unusable. Not known (the reconcile stopped before it): status keeps its value.
    fingerprint_key: tuple[str, str] | None = None
    fingerprint_key_known: bool = False
    endpoints: dict[str, str] = field(default_factory=dict)
    apply_failure: ApplyFailure | None = None  # the API server refused a child write


def _storage_ready(obs: StoreObservation) -> tuple[str, str, str, str]:
    r = obs.rollout
    if obs.problem_reason in STORAGE_PROBLEMS and r.ready == 0:
        return ("StorageReady", "False", obs.problem_reason, obs.problem_message or "")
    if not obs.deployment_exists:
        return ("StorageReady", "False", "NoStorePods", "no store pods yet")
    if r.ready == 0:
        return ("StorageReady", "False", "StoreNotReady",
                f"no store pod reports Ready ({r.replicas} pods): {NOT_READY_HINT}")
    if obs.storage == "embedded":
        where = ("a PersistentVolumeClaim" if obs.embedded_volume == "persistentVolumeClaim"
                 else "an emptyDir (every suppression is lost when the pod goes)")
        return ("StorageReady", "True", "EmbeddedNotHighlyAvailable",
                f"embedded SQLite on {where}: a single replica, not highly available — for "
                "development; use storage.type postgres in production")
    return ("StorageReady", "True", "StoreReady",
            f"{r.ready} store pods report the database Ready (durability {obs.durability})")


def _conditions(obs: StoreObservation, lost: bool) -> list[tuple[str, str, str, str]]:
    """`lost`: the store was Ready before (or already Degraded for that), so a store with
    no ready pod now has lost its storage rather than still starting."""
    r = obs.rollout
    storage = _storage_ready(obs)
    problem = obs.problem_reason
    if r.available >= 1:
        suffix = "" if r.complete else " (a new configuration is rolling out)"
        ready = ("Ready", "True", "Serving", f"serving on {r.available} pods{suffix}")
    elif problem:
        ready = ("Ready", "False", problem, obs.problem_message or "")
    elif not obs.deployment_exists:
        ready = ("Ready", "False", "NoStorePods", "no store pods yet")
    else:
        ready = ("Ready", "False", storage[2], storage[3])

    if problem and not obs.deployment_exists:
        progressing = ("Progressing", "False", problem,
                       "nothing to roll out until the problem is fixed")
    elif obs.deployment_exists and not r.complete:
        progressing = ("Progressing", "True", "RollingOut",
                       f"{r.updated}/{r.desired} pods updated, {r.available} available")
    else:
        progressing = ("Progressing", "False", "RolloutComplete",
                       f"{r.updated} pods on the current configuration")

    if problem and obs.deployment_exists:
        degraded = ("Degraded", "True", problem,
                    f"{obs.problem_message}; the previous configuration keeps serving")
    elif problem:
        degraded = ("Degraded", "True", problem, obs.problem_message or "")
    elif obs.rollout_stuck:
        degraded = ("Degraded", "True", "RolloutStuck",
                    "the Deployment exceeded its progress deadline: new store pods do not "
                    "become ready (see `kubectl describe` of the store pods)")
    elif lost and storage[2] == "StoreNotReady":
        degraded = ("Degraded", "True", "StoreNotReady", storage[3])
    elif r.complete and r.available < obs.min_replicas:
        degraded = ("Degraded", "True", "BelowMinReplicas",
                    f"{r.available} store pods available, replicas.min is "
                    f"{obs.min_replicas}")
    else:
        degraded = ("Degraded", "False", "AsExpected", "all checks pass")
    return [ready, progressing, storage, degraded, apply_condition(obs.apply_failure)]


def _warning(ctype: str, cstatus: str, reason: str, before: dict[str, Any] | None) -> bool:
    """Warnings for configuration problems and for losing what worked; a store that is
    merely starting (not Ready yet) posts Normal Events."""
    if (ctype, cstatus) not in {("Ready", "False"), ("StorageReady", "False"),
                                ("Degraded", "True"), ("ApplyFailed", "True")}:
        return False
    if reason in ("RollingOut", "NoStorePods"):
        return False
    if reason == "StoreNotReady" and ctype != "Degraded":
        return before is not None and before.get("status") == "True"
    return True


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return {}


def compute_store_status(previous: dict[str, Any] | None, obs: StoreObservation,
                         now: datetime.datetime) -> tuple[dict[str, Any], list[Transition]]:
    """The new status (the operator's fields only) and the condition transitions."""
    prev = previous or {}
    r = obs.rollout
    out: dict[str, Any] = {}
    if obs.generation is not None:
        out["observedGeneration"] = obs.generation
    out["storage"] = obs.storage
    out["durability"] = obs.durability
    out["highlyAvailable"] = obs.storage == "postgres" and r.ready >= 2
    if obs.signing_key_secret is not None:
        out["signingKeySecret"] = obs.signing_key_secret
    elif "signingKeySecret" in prev:
        out["signingKeySecret"] = None
    if obs.fingerprint_key_known:
        # What referencing SpamPolicies mount (and roll on), so they need not read the
        # Secret at every resync: named only once it exists and holds a usable key.
        if obs.fingerprint_key is not None:
            out["fingerprintKeySecret"], out["fingerprintKeyVersion"] = obs.fingerprint_key
        else:
            for stale in ("fingerprintKeySecret", "fingerprintKeyVersion"):
                if stale in prev:
                    out[stale] = None
    if r.target_hash is not None:
        out["configHash"] = r.target_hash
    out["endpoints"] = dict(obs.endpoints)
    if "publicBaseURL" in (prev.get("endpoints") or {}) and \
            "publicBaseURL" not in obs.endpoints:
        out["endpoints"]["publicBaseURL"] = None
    out.update(replicas=r.replicas, readyReplicas=r.ready, updatedReplicas=r.updated,
               availableReplicas=r.available)
    lost = _condition(prev, "StorageReady").get("status") == "True" or \
        _condition(prev, "Degraded").get("reason") == "StoreNotReady"
    out["conditions"], transitions = build_conditions(prev, _conditions(obs, lost),
                                                      obs.generation, now, _warning)
    return out, quiet_transitions(prev, transitions)


def is_ready(status: dict[str, Any] | None) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (status or {}).get("conditions") or [])


def ready_message(status: dict[str, Any] | None) -> str:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("message") or c.get("reason") or ""
    return "the store has not been reconciled yet"
