"""The CustomResourceDefinitions, generated from Python so the policy schema has one source.

`filter_server.policy.schema.POLICY_SCHEMA` is embedded verbatim as `spec.policy`; the
serving part of the spec is defined here, the UnsubscribeStore CRD in `store_crd.py`. `python -m mailwarden_operator.crd` rewrites
`crds/*.yaml` and the chart's copies; a test fails when the committed files drift.

The status schema declares every field the operator writes, and keeps
`x-kubernetes-preserve-unknown-fields` under `status.kopf` so kopf's own bookkeeping is never
pruned (a pruned kopf status silently breaks handlers).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from filter_server.policy.schema import POLICY_SCHEMA
from mailwarden_operator import naming, store_naming

REPO_ROOT = Path(__file__).resolve().parent.parent
CRD_DIRS = (REPO_ROOT / "crds", REPO_ROOT / "charts" / "mailwarden" / "crds")

DEFAULT_MIN_REPLICAS = 2
DEFAULT_MAX_REPLICAS = 10
DEFAULT_CPU_UTILIZATION = 70
DEFAULT_RPS_METRIC = "mailwarden_classify_requests_per_second"


def _int_or_string(description: str, default: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"x-kubernetes-int-or-string": True, "description": description}
    if default is not None:
        out["default"] = default
    # Plain integers or percentages, as Deployments and PDBs accept them. Structural
    # schemas allow only bare types inside the int-or-string anyOf, so the range is a rule.
    out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    out["x-kubernetes-validations"] = [{
        "rule": "type(self) == int ? self >= 0 : self.matches('^(100|[1-9]?[0-9])%$')",
        "message": "must be a non-negative integer or a percentage such as '25%'",
    }]
    return out


def _quantity_map(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
        },
    }


SERVER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Settings of the filter server process (`mailwarden serve`).",
    "default": {},
    "properties": {
        "workers": {"type": "integer", "minimum": 1, "maximum": 256,
                    "description": "Worker threads per pod that classify messages "
                    "(default: the server's own default, one per CPU)."},
        "drainSeconds": {"type": "integer", "minimum": 0, "maximum": 600, "default": 10,
                         "description": "After SIGTERM the pod reports NOT_SERVING and keeps "
                         "answering in-flight and late requests for this long."},
        "graceSeconds": {"type": "integer", "minimum": 0, "maximum": 600, "default": 5,
                         "description": "Extra time after draining for open streams to "
                         "finish before the server stops."},
        "preStopSeconds": {"type": "integer", "minimum": 0, "maximum": 120, "default": 5,
                           "description": "Pause before SIGTERM so endpoints and client "
                           "resolvers drop the pod before it stops accepting work."},
        "maxMessageBytes": {"type": "integer", "minimum": 1024, "maximum": 268435456,
                            "description": "Largest raw message accepted (larger ones "
                            "answer RESOURCE_EXHAUSTED). Default: the server's."},
        "maxConnectionAgeMs": {"type": "integer", "minimum": 1000, "maximum": 86400000,
                               "description": "Clients are asked to reconnect after this "
                               "long, so they re-resolve and new pods get traffic. "
                               "Default: the server's."},
        "maxConcurrentRpcs": {"type": "integer", "minimum": 1, "maximum": 100000,
                              "description": "Concurrent RPCs per pod before new ones "
                              "queue. Default: the server's."},
        "logLevel": {"type": "string", "default": "info",
                     "enum": ["debug", "info", "warning", "error"],
                     "description": "Server log level."},
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The policy and how it is served.",
    "required": ["policy"],
    "properties": {
        "policy": copy.deepcopy(POLICY_SCHEMA),
        "unsubscribeStoreRef": {
            "type": "object",
            "description": "An UnsubscribeStore (same namespace) whose suppressions the "
            "filter pods report in every Classify response: they follow its change stream "
            "(`--suppression-store <name>-unsubscribe.<namespace>.svc:50061`). A missing or "
            "not-ready store never stops classification; the SuppressionReady condition "
            "says why suppressions are unavailable.",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "maxLength": 253,
                         "description": "UnsubscribeStore name."},
            },
        },
        "image": {"type": "string", "maxLength": 1024,
                  "description": "Filter server image. Default: the operator's "
                  "`--filter-image` (the chart sets it to the release's image)."},
        "imagePullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"],
                            "default": "IfNotPresent",
                            "description": "Image pull policy of the filter container."},
        "replicas": {
            "type": "object",
            "description": "Replica bounds. The HorizontalPodAutoscaler owns the actual "
            "count between them.",
            "default": {},
            "properties": {
                "min": {"type": "integer", "minimum": 1, "maximum": 1000,
                        "default": DEFAULT_MIN_REPLICAS,
                        "description": "Fewest replicas (at least 2 for high availability)."},
                "max": {"type": "integer", "minimum": 1, "maximum": 1000,
                        "default": DEFAULT_MAX_REPLICAS,
                        "description": "Most replicas the autoscaler may run."},
            },
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max",
                 "message": "replicas.min must not exceed replicas.max"},
            ],
        },
        "autoscaling": {
            "type": "object",
            "description": "Autoscaling targets. Scale-up is fast (doubling every 15 s, "
            "no stabilization) for mail surges; scale-down is slow (10% a minute after "
            "5 minutes of stability).",
            "default": {},
            "properties": {
                "cpuUtilization": {"type": "integer", "minimum": 1, "maximum": 100,
                                   "default": DEFAULT_CPU_UTILIZATION,
                                   "description": "Target average CPU utilization in "
                                   "percent of the CPU request."},
                "requestsPerSecond": {
                    "type": "object",
                    "description": "Optional second target: average Classify requests per "
                    "second per pod, read as a Pods metric (needs a custom metrics adapter "
                    "such as prometheus-adapter exposing it).",
                    "required": ["averageValue"],
                    "properties": {
                        "averageValue": {"type": "integer", "minimum": 1,
                                         "description": "Requests per second per pod."},
                        "metricName": {"type": "string", "maxLength": 253,
                                       "default": DEFAULT_RPS_METRIC,
                                       "description": "Name of the Pods metric."},
                    },
                },
                "scaleDownStabilizationSeconds": {
                    "type": "integer", "minimum": 0, "maximum": 3600, "default": 300,
                    "description": "How long load must stay low before scaling down."},
            },
        },
        "disruption": {
            "type": "object",
            "description": "Voluntary disruption budget (node drains, upgrades).",
            "default": {},
            "properties": {
                "maxUnavailable": _int_or_string(
                    "Pods that may be evicted at once (number or percentage).", 1),
            },
        },
        "rollout": {
            "type": "object",
            "description": "Rolling update of policy and image changes; no pod is taken "
            "down before its replacement is ready (maxUnavailable is always 0).",
            "default": {},
            "properties": {
                "maxSurge": _int_or_string(
                    "Extra pods during a rollout (number or percentage).", "25%"),
            },
        },
        "resources": {
            "type": "object",
            "description": "Compute resources of the filter container. Default: requests "
            "cpu 250m, memory 256Mi; limit memory 512Mi.",
            "properties": {
                "requests": _quantity_map("Requested resources (cpu, memory, ...)."),
                "limits": _quantity_map("Resource limits (cpu, memory, ...)."),
            },
        },
        "server": SERVER_SCHEMA,
        "tls": {
            "type": "object",
            "description": "Serve gRPC over TLS from a Secret holding tls.crt, tls.key and "
            "(for client certificates) ca.crt.",
            "required": ["secretName"],
            "properties": {
                "secretName": {"type": "string", "maxLength": 253,
                               "description": "Secret with the server certificate."},
                "requireClientCert": {"type": "boolean", "default": False,
                                      "description": "Require and verify client "
                                      "certificates against ca.crt (mutual TLS)."},
            },
        },
        "monitoring": {
            "type": "object",
            "description": "Prometheus scraping of the filter pods' metrics port.",
            "default": {},
            "properties": {
                "serviceMonitor": {"type": "boolean", "default": True,
                                   "description": "Create a ServiceMonitor when the "
                                   "monitoring.coreos.com CRD exists in the cluster."},
                "interval": {"type": "string", "default": "30s",
                             "pattern": r"^[0-9]+(ms|s|m|h)$",
                             "description": "Scrape interval."},
                "labels": {"type": "object", "additionalProperties": {"type": "string"},
                           "description": "Extra labels on the ServiceMonitor (for a "
                           "Prometheus serviceMonitorSelector)."},
            },
        },
        "scheduling": {
            "type": "object",
            "description": "Where the filter pods may run. Pods always spread across "
            "zones and nodes.",
            "properties": {
                "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"},
                                 "description": "Node labels the pods require."},
                "priorityClassName": {"type": "string", "maxLength": 253,
                                      "description": "PriorityClass of the pods."},
                "tolerations": {
                    "type": "array",
                    "description": "Taints the pods tolerate.",
                    "items": {
                        "type": "object",
                        "description": "A toleration (as in a Pod spec).",
                        "properties": {
                            "key": {"type": "string", "description": "Taint key."},
                            "operator": {"type": "string", "enum": ["Exists", "Equal"],
                                         "description": "Exists or Equal."},
                            "value": {"type": "string", "description": "Taint value."},
                            "effect": {"type": "string",
                                       "enum": ["NoSchedule", "PreferNoSchedule",
                                                "NoExecute"],
                                       "description": "Taint effect."},
                            "tolerationSeconds": {"type": "integer",
                                                  "description": "For NoExecute: how "
                                                  "long the pod stays bound."},
                        },
                    },
                },
            },
        },
    },
}

CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A condition per the Kubernetes API conventions.",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string", "description": "Ready, Progressing, PolicyValid, "
                 "Degraded or SuppressionReady."},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"],
                   "description": "True, False or Unknown."},
        "reason": {"type": "string", "description": "CamelCase reason for the status."},
        "message": {"type": "string", "description": "Human-readable detail."},
        "lastTransitionTime": {"type": "string", "format": "date-time",
                               "description": "When the status last changed."},
        "observedGeneration": {"type": "integer", "format": "int64",
                               "description": "Generation the condition was computed for."},
    },
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Observed state, written by the operator.",
    "properties": {
        "observedGeneration": {"type": "integer", "format": "int64",
                               "description": "The generation last reconciled."},
        "conditions": {"type": "array", "items": CONDITION_SCHEMA,
                       "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["type"],
                       "description": "Ready, Progressing, PolicyValid, Degraded, and "
                       "SuppressionReady when unsubscribeStoreRef is set."},
        "suppressionStore": {"type": "string",
                             "description": "HOST:PORT of the UnsubscribeStore the filter "
                             "pods read suppressions from (unsubscribeStoreRef)."},
        "policyHash": {"type": "string",
                       "description": "Content hash of the policy live on all replicas."},
        "desiredPolicyHash": {"type": "string",
                              "description": "Content hash of the newest valid policy."},
        "policyConfigMap": {"type": "string",
                            "description": "ConfigMap holding the desired policy."},
        "rolloutStartedAt": {"type": "string", "format": "date-time",
                             "description": "When the desired policy started rolling out."},
        "lastPropagationSeconds": {"type": "number",
                                   "description": "Seconds the last policy change took "
                                   "from being applied to being ready on every replica."},
        "recentPolicyHashes": {"type": "array", "items": {"type": "string"},
                               "description": "Recently rolled-out hashes, newest first "
                               "(their ConfigMaps are kept for rollback)."},
        "replicas": {"type": "integer", "description": "Pods of the Deployment."},
        "readyReplicas": {"type": "integer", "description": "Ready pods."},
        "updatedReplicas": {"type": "integer",
                            "description": "Pods on the desired policy and image."},
        "availableReplicas": {"type": "integer", "description": "Available pods."},
        "kopf": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "description": "kopf's own bookkeeping (do not edit)."},
    },
}


def custom_resource_definition(*, kind: str, plural: str, singular: str,
                               short_names: list[str], description: str,
                               spec: dict[str, Any], status: dict[str, Any],
                               max_name_length: int, ready_description: str,
                               printer_columns: list[dict[str, Any]]) -> dict[str, Any]:
    """A namespaced `mailwarden.dev` CRD with one version, the status subresource, the
    `mailwarden` category, a name-length rule (child Service names must fit 63), and the
    printer columns Ready, `printer_columns`, Age."""
    schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object", "description": "Standard object metadata."},
            "spec": copy.deepcopy(spec),
            "status": copy.deepcopy(status),
        },
        "x-kubernetes-validations": [
            {"rule": f"size(self.metadata.name) <= {max_name_length}",
             "message": f"{kind} names are at most {max_name_length} characters "
             "(child Service names must fit 63)"},
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{naming.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "mailwarden"},
        },
        "spec": {
            "group": naming.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["mailwarden", "all"],
            },
            "versions": [{
                "name": naming.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Ready", "type": "string",
                     "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                     "description": ready_description},
                    *printer_columns,
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": schema},
            }],
        },
    }


def spampolicy_crd() -> dict[str, Any]:
    """The SpamPolicy CustomResourceDefinition."""
    return custom_resource_definition(
        kind=naming.KIND, plural=naming.PLURAL, singular="spampolicy",
        short_names=["sp", "spampol"],
        description="SpamPolicy: a Mailwarden spam-filtering policy and the autoscaled, "
        "highly available gRPC filter pods that serve it.",
        spec=SPEC_SCHEMA, status=STATUS_SCHEMA, max_name_length=naming.MAX_NAME_LENGTH,
        ready_description="Whether the policy is live on every replica.",
        printer_columns=[
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas",
             "description": "Ready filter pods."},
            {"name": "Policy Hash", "type": "string", "jsonPath": ".status.policyHash",
             "description": "Content hash of the live policy."},
            {"name": "Valid", "type": "string", "priority": 1,
             "jsonPath": '.status.conditions[?(@.type=="PolicyValid")].status',
             "description": "Whether the newest policy validated."},
        ])


def _peering_crd(cluster: bool) -> dict[str, Any]:
    # kopf's peering resources (kopf.dev/v1): operators announce themselves in `status`
    # so that only the highest-priority replica handles resources.
    kind = "ClusterKopfPeering" if cluster else "KopfPeering"
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev",
                     "labels": {"app.kubernetes.io/part-of": "mailwarden"}},
        "spec": {
            "group": "kopf.dev",
            "scope": "Cluster" if cluster else "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "kopf operator peering: which operator replicas are "
                    "alive and their priorities.",
                    "properties": {
                        "status": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True,
                                   "description": "Operator identities with priority, "
                                   "last-seen time and lifetime."},
                    },
                }},
            }],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, as committed under crds/ and charts/mailwarden/crds/."""
    # Imported here: store_crd builds on this module's schema pieces.
    from mailwarden_operator.store_crd import unsubscribestore_crd

    return {
        f"{naming.PLURAL}.{naming.GROUP}.yaml": spampolicy_crd(),
        f"{store_naming.PLURAL}.{naming.GROUP}.yaml": unsubscribestore_crd(),
        "clusterkopfpeerings.kopf.dev.yaml": _peering_crd(cluster=True),
        "kopfpeerings.kopf.dev.yaml": _peering_crd(cluster=False),
    }


HEADER = ("# Generated by `python -m mailwarden_operator.crd` from operator/crd.py,\n"
          "# operator/store_crd.py and filter_server/policy/schema.py. Do not edit by hand.\n")


def render_yaml(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)


def write_all(directories: tuple[Path, ...] = CRD_DIRS) -> list[Path]:
    written = []
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        for filename, crd in all_crds().items():
            path = directory / filename
            path.write_text(render_yaml(crd), encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all():
        print(written_path.relative_to(REPO_ROOT))
    sys.exit(0)
