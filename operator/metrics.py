"""Prometheus metrics of the operator (served on `--metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("mailwarden_operator_reconciles_total",
                     "SpamPolicy reconciles by trigger and result.", ["trigger", "result"])
RECONCILE_SECONDS = Histogram("mailwarden_operator_reconcile_duration_seconds",
                              "Time one SpamPolicy reconcile took.",
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
                          "Admission reviews of SpamPolicies by outcome.", ["allowed"])


def forget(namespace: str, name: str) -> None:
    """Drop the per-policy series of a deleted SpamPolicy."""
    for gauge in (LAST_PROPAGATION_SECONDS, POLICY_VALID, POLICY_READY):
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass
