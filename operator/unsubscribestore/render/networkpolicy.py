"""The NetworkPolicy in front of an UnsubscribeStore's pods (opt-out with
`spec.networkPolicy.enabled: false`).

The gRPC port carries the whole suppression list (`Export`) and writes to it (`Import`,
`Unsubscribe`), so only the filter pods of the namespace (SpamPolicies reference stores of
their own namespace) and the peers named in `spec.networkPolicy.grpcClients` (senders,
migration jobs) may reach it. The one-click port faces the internet through the Ingress
or Gateway, so it stays open; the metrics port is open to `spec.networkPolicy.metricsFrom`
(everyone when empty: metrics carry no addresses or secrets). Only ingress is restricted.
"""

from __future__ import annotations

from typing import Any

from mailwarden_operator.unsubscribestore import naming


def render_store_networkpolicy(owner: dict[str, Any]) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    settings = owner["spec"]["networkPolicy"]
    grpc_from = [{"podSelector": {"matchLabels": dict(naming.FILTER_POD_LABELS)}},
                 *settings.get("grpcClients", [])]
    metrics_rule: dict[str, Any] = {"ports": [{"port": "metrics", "protocol": "TCP"}]}
    if settings.get("metricsFrom"):
        metrics_rule["from"] = list(settings["metricsFrom"])
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": naming.child_metadata(owner, naming.workload_name(name)),
        "spec": {
            "podSelector": {"matchLabels": naming.selector_labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": grpc_from, "ports": [{"port": "grpc", "protocol": "TCP"}]},
                {"ports": [{"port": "http", "protocol": "TCP"}]},
                metrics_rule,
            ],
        },
    }


def networkpolicy_wanted(owner: dict[str, Any]) -> bool:
    return bool(owner["spec"]["networkPolicy"]["enabled"])
