"""Builders of the parts both CustomResourceDefinitions share: the CRD around a spec and
status schema, conditions, kopf's peering CRDs, and the schema pieces of "how pods are
served" (image pull policy, CPU target, resources, monitoring, scheduling).

Each builder returns a fresh dict, so a kind may adjust its copy without touching the
other kind's schema.
"""

from __future__ import annotations

import copy
from typing import Any

from mailwarden_operator.common.naming import GROUP, VERSION

DEFAULT_CPU_UTILIZATION = 70
# What a Service name must be (and so the name of a resource whose Services are named after
# it): Kubernetes' DNS-1035 label, length checked separately.
DNS_1035_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes resource quantity ("250m", "1Gi", "1e3"), as the API server's own pattern.
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")


def positive_int_or_string(field: str, description: str, default: Any = None
                           ) -> dict[str, Any]:
    """A count of pods as Deployments and PDBs take it: an integer or a percentage, never
    zero — a Deployment with `maxSurge` 0 beside our `maxUnavailable` 0 is refused by the
    API server, and a PodDisruptionBudget with `maxUnavailable` 0 blocks every node drain
    forever. `field` names it in the message (e.g. "rollout.maxSurge")."""
    out: dict[str, Any] = {"x-kubernetes-int-or-string": True, "description": description}
    if default is not None:
        out["default"] = default
    # Structural schemas allow only bare types inside the int-or-string anyOf, so the range
    # is a rule.
    out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    out["x-kubernetes-validations"] = [{
        "rule": "type(self) == int ? self >= 1 : self.matches('^(100|[1-9][0-9]?)%$')",
        "message": f"{field} must be at least 1 or a percentage from 1% to 100% (0 would "
        f"{ZERO_CONSEQUENCES[field.split('.')[-1]]})",
    }]
    return out


# What a zero would do, for the messages of positive_int_or_string.
ZERO_CONSEQUENCES = {
    "maxSurge": "make the Deployment invalid: maxUnavailable is always 0",
    "maxUnavailable": "block every node drain",
}


def replica_bounds(description: str, *, default_min: int, default_max: int, maximum: int,
                   min_description: str, max_description: str) -> dict[str, Any]:
    """`replicas: {min, max}` with the rule min <= max. The object's default is complete
    (both bounds): the API server validates a default as written, CEL rules included, and
    `{}` has no `min` to compare."""
    return {
        "type": "object",
        "description": description,
        "default": {"min": default_min, "max": default_max},
        "properties": {
            "min": {"type": "integer", "minimum": 1, "maximum": maximum,
                    "default": default_min, "description": min_description},
            "max": {"type": "integer", "minimum": 1, "maximum": maximum,
                    "default": default_max, "description": max_description},
        },
        "x-kubernetes-validations": [
            {"rule": "self.min <= self.max",
             "message": "replicas.min must not exceed replicas.max"},
        ],
    }


def pre_stop_seconds(default: int) -> dict[str, Any]:
    # At least 1: Kubernetes before 1.33 refuses a preStop sleep of 0 s, and without the
    # pause endpoints keep routing to a pod that has stopped accepting work.
    return {"type": "integer", "minimum": 1, "maximum": 120, "default": default,
            "description": "Pause before SIGTERM (1 to 120 s) so endpoints and client "
            "resolvers drop the pod before it stops accepting work."}


def quantity_map(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        },
    }


# --- serving: the schema pieces both kinds' pods are configured by --------------------------
def image_pull_policy(description: str) -> dict[str, Any]:
    return {"type": "string", "enum": ["Always", "IfNotPresent", "Never"],
            "default": "IfNotPresent", "description": description}


# A DNS-1123 subdomain (Secret and ServiceAccount names), as the API server checks it.
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def image_pull_secrets(pods: str) -> dict[str, Any]:
    """`imagePullSecrets` of `pods` ("the filter pods"), as in a Pod spec."""
    return {
        "type": "array",
        "description": f"Secrets (kubernetes.io/dockerconfigjson, same namespace) with "
        f"credentials for pulling the image of {pods} from a private registry. Those of "
        "the ServiceAccount (serviceAccountName) apply too.",
        "maxItems": 16,
        "items": {
            "type": "object",
            "description": "A Secret in the same namespace.",
            "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": 253,
                                    "pattern": SUBDOMAIN_PATTERN,
                                    "description": "Secret name."}},
        },
    }


def service_account_name(pods: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": 253, "pattern": SUBDOMAIN_PATTERN,
            "description": f"ServiceAccount (same namespace, must exist) {pods} run as, for "
            "its imagePullSecrets or a cloud workload identity. Default: the namespace's "
            "`default`. Its API token is never mounted: the pods do not call the "
            "Kubernetes API."}


def cpu_utilization() -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": 100,
            "default": DEFAULT_CPU_UTILIZATION,
            "description": "Target average CPU utilization in percent of the CPU request."}


def scale_down_stabilization() -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": 3600, "default": 300,
            "description": "How long load must stay low before scaling down."}


def resource_properties() -> dict[str, Any]:
    """`requests` and `limits` of a container's `resources`."""
    return {
        "requests": quantity_map("Requested resources (cpu, memory, ...)."),
        "limits": quantity_map("Resource limits (cpu, memory, ...)."),
    }


CPU_REQUESTED_RULE = ("(has({r}.requests) && 'cpu' in {r}.requests) || "
                      "(has({r}.limits) && 'cpu' in {r}.limits)")
CPU_REQUESTED_MESSAGE = ("resources must request cpu (requests.cpu, or limits.cpu, which "
                         "the request defaults to): the autoscaler's CPU target is a "
                         "percentage of the request, and without one it stops scaling")


def monitoring(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
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
    }


def scheduling(description: str, pods: str) -> dict[str, Any]:
    """Where `pods` ("the pods", "the store pods") may run."""
    return {
        "type": "object",
        "description": description,
        "properties": {
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"},
                             "description": f"Node labels {pods} require."},
            "priorityClassName": {"type": "string", "maxLength": 253,
                                  "description": f"PriorityClass of {pods}."},
            "tolerations": {
                "type": "array",
                "description": f"Taints {pods} tolerate.",
                "items": {
                    "type": "object",
                    "description": "A toleration (as in a Pod spec).",
                    "properties": {
                        "key": {"type": "string", "description": "Taint key."},
                        "operator": {"type": "string", "enum": ["Exists", "Equal"],
                                     "description": "Exists or Equal."},
                        "value": {"type": "string", "description": "Taint value."},
                        "effect": {"type": "string",
                                   "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
                                   "description": "Taint effect."},
                        "tolerationSeconds": {"type": "integer",
                                              "description": "For NoExecute: how long the "
                                              "pod stays bound."},
                    },
                },
            },
        },
    }


# --- status and the CRD itself ---------------------------------------------------------------
def condition_schema(types: str) -> dict[str, Any]:
    """A condition per the Kubernetes API conventions; `types` describes the kind's types."""
    return {
        "type": "object",
        "description": "A condition per the Kubernetes API conventions.",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "description": types},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"],
                       "description": "True, False or Unknown."},
            "reason": {"type": "string", "description": "CamelCase reason for the status."},
            "message": {"type": "string", "description": "Human-readable detail."},
            "lastTransitionTime": {"type": "string", "format": "date-time",
                                   "description": "When the status last changed."},
            "observedGeneration": {"type": "integer", "format": "int64",
                                   "description": "Generation the condition was computed "
                                   "for."},
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
            # The API server's own: a CRD may say nothing about it but `type: object` (and
            # restrict name/generateName), not even a description.
            "metadata": {"type": "object"},
            "spec": copy.deepcopy(spec),
            "status": copy.deepcopy(status),
        },
        "x-kubernetes-validations": [
            {"rule": f"size(self.metadata.name) <= {max_name_length}",
             "message": f"{kind} names are at most {max_name_length} characters "
             "(child Service names must fit 63)"},
            # Services are named after the resource, and a Service name must be a DNS-1035
            # label: a valid object name such as `mail.inbound` or `1st` would wedge every
            # reconcile on the Service's 422.
            {"rule": f"self.metadata.name.matches('{DNS_1035_LABEL}')",
             "message": f"{kind} names must be DNS-1035 labels (lower-case letters, digits "
             "and '-', starting with a letter and ending with a letter or digit): the "
             "operator names Services after them"},
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "mailwarden"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                # Not `all`: `kubectl delete all --all` would delete SpamPolicies and so
                # stop filtering. `kubectl get mailwarden` lists both kinds.
                "categories": ["mailwarden"],
            },
            "versions": [{
                "name": VERSION,
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


def peering_crd(cluster: bool) -> dict[str, Any]:
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
