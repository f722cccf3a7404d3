"""Prometheus metrics of the operator (served on `--metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# No `<name>_created` gauge beside every counter and histogram: Prometheus' text format
# shows them as separate metrics no rule or dashboard uses (the filter server does the same).
disable_created_metrics()

RECONCILES = Counter("mailwarden_operator_reconciles_total",
                     "SpamPolicy reconciles by trigger and result.", ["trigger", "result"])
RECONCILE_SECONDS = Histogram("mailwarden_operator_reconcile_duration_seconds",
                              "Time one reconcile (SpamPolicy or UnsubscribeStore) took.",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
API_WRITES = Counter("mailwarden_operator_api_writes_total",
                     "Create/patch/delete requests sent to the API server.", ["verb", "kind"])
PROPAGATION_SECONDS = Histogram(
    "mailwarden_operator_policy_propagation_seconds",
    "Seconds from applying a new policy to it being ready on every replica.",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800))
LAST_PROPAGATION_SECONDS = Gauge(
    "mailwarden_operator_policy_last_propagation_seconds",
    "The last policy propagation time of each SpamPolicy.", ["namespace", "name"])
POLICY_VALID = Gauge("mailwarden_operator_policy_valid",
                     "1 when the newest spec.policy validated, else 0.", ["namespace", "name"])
POLICY_READY = Gauge("mailwarden_operator_policy_ready",
                     "1 when the SpamPolicy is Ready, else 0.", ["namespace", "name"])
PRUNED_CONFIGMAPS = Counter("mailwarden_operator_pruned_configmaps_total",
                            "Old policy ConfigMaps deleted after rollouts.")
WEBHOOK_REVIEWS = Counter("mailwarden_operator_webhook_reviews_total",
                          "Admission reviews of SpamPolicies by outcome: allowed true, "
                          "false, or skipped (an unchanged spec or an object being "
                          "deleted).", ["allowed"])
STORE_RECONCILES = Counter("mailwarden_operator_store_reconciles_total",
                           "UnsubscribeStore reconciles by trigger and result.",
                           ["trigger", "result"])
STORE_READY = Gauge("mailwarden_operator_store_ready",
                    "1 when the UnsubscribeStore is Ready, else 0.", ["namespace", "name"])
SIGNING_KEYS_GENERATED = Counter("mailwarden_operator_signing_keys_generated_total",
                                 "Signing-key Secrets the operator created (once per store).")
FINGERPRINT_KEYS_GENERATED = Counter(
    "mailwarden_operator_fingerprint_keys_generated_total",
    "Suppression fingerprint-key Secrets the operator created (once per store).")

SPAMPOLICY_CONDITION = Gauge(
    "mailwarden_operator_spampolicy_condition",
    "SpamPolicy status conditions: 1 for the current status of each condition, 0 for the "
    "other statuses.", ["namespace", "name", "condition", "status"])
CONDITION_STATUSES = ("True", "False", "Unknown")
_conditions_seen: dict[tuple[str, str], set[str]] = {}


def set_conditions(namespace: str, name: str, conditions: list[dict]) -> None:
    """Export a SpamPolicy's conditions; a condition that disappeared loses its series."""
    current = {c["type"]: c["status"] for c in conditions}
    for gone in _conditions_seen.get((namespace, name), set()) - set(current):
        for status in CONDITION_STATUSES:
            _remove(SPAMPOLICY_CONDITION, namespace, name, gone, status)
    for ctype, cstatus in current.items():
        for status in CONDITION_STATUSES:
            SPAMPOLICY_CONDITION.labels(namespace, name, ctype, status).set(
                1 if status == cstatus else 0)
    _conditions_seen[(namespace, name)] = set(current)


def _remove(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass


def forget(namespace: str, name: str) -> None:
    """Drop the per-policy series of a deleted SpamPolicy."""
    for gauge in (LAST_PROPAGATION_SECONDS, POLICY_VALID, POLICY_READY):
        _remove(gauge, namespace, name)
    set_conditions(namespace, name, [])
    _conditions_seen.pop((namespace, name), None)


def forget_all() -> None:
    """Drop every per-resource series: a replica that is not the active one must not keep
    exporting what it saw while it was (alerts would read stale values)."""
    for gauge in (LAST_PROPAGATION_SECONDS, POLICY_VALID, POLICY_READY, SPAMPOLICY_CONDITION,
                  STORE_READY):
        gauge.clear()
    _conditions_seen.clear()


def forget_store(namespace: str, name: str) -> None:
    """Drop the per-store series of a deleted UnsubscribeStore."""
    _remove(STORE_READY, namespace, name)
