"""The SpamPolicy CustomResourceDefinition: `spec.policy` is the filter server's policy
schema (`filter_server.policy.schema.POLICY_SCHEMA`) embedded verbatim, so the policy has
one source; the serving part of the spec and the status are defined here, from the pieces
both kinds share (`common/crd.py`). `python -m mailwarden_operator.crd` writes the files.

The status schema declares every field the operator writes, and keeps
`x-kubernetes-preserve-unknown-fields` under `status.kopf` so kopf's own bookkeeping is never
pruned (a pruned kopf status silently breaks handlers).
"""

from __future__ import annotations

import copy
from typing import Any

from filter_server.policy.schema import POLICY_SCHEMA
from mailwarden_operator.common import crd as common
from mailwarden_operator.spampolicy import learning, naming

DEFAULT_MIN_REPLICAS = 2
DEFAULT_MAX_REPLICAS = 10
DEFAULT_RPS_METRIC = "mailwarden_classify_requests_per_second"


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
        "preStopSeconds": common.pre_stop_seconds(5),
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

MAX_GOLDEN_CONFIGMAPS = 16

def _golden_set(key: str, key_schema: dict[str, Any], what: str,
                rules: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The schema of one golden set: where its messages are (`key`), their label and the
    bound on their action — the same for every kind of source."""
    return {
        "type": "object",
        "required": [key, "label"],
        "properties": {
            key: key_schema,
            "label": {"type": "string", "enum": ["ham", "spam"],
                      "description": f"What every message of the {what} is."},
            "atMost": {"type": "string", "enum": ["ACCEPT", "TAG"],
                       "description": "Ham only: the most severe action allowed "
                       "(default TAG)."},
            "atLeast": {"type": "string", "enum": ["TAG", "QUARANTINE", "REJECT"],
                        "description": "Spam only: the least severe action "
                        "required (default TAG)."},
        },
        "x-kubernetes-validations": [
            *(rules or []),
            {"rule": "!has(self.atMost) || self.label == 'ham'",
             "message": "atMost is for ham; spam sets take atLeast"},
            {"rule": "!has(self.atLeast) || self.label == 'spam'",
             "message": "atLeast is for spam; ham sets take atMost"}],
    }


GOLDEN_CORPUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Labelled messages every change of this policy must keep classifying "
    "acceptably (docs/operator.md, \"Golden corpus\"). The admission webhook, and the "
    "operator when no webhook is installed, classify them with the candidate policy and "
    "refuse a change that would give golden ham a more severe action than allowed "
    "(default: QUARANTINE or REJECT) or golden spam a less severe one than required "
    "(default: below TAG), naming the messages and the rules responsible. At most "
    "2,000 messages in all.",
    "x-kubernetes-validations": [{
        "rule": "has(self.configMaps) || has(self.directories)",
        "message": "goldenCorpus names configMaps, directories or both"}],
    "properties": {
        "directories": {
            "type": "array",
            "description": "Directories of the golden-corpus volume the operator mounts "
            "(chart value operator.goldenCorpusVolume), for corpora beyond ConfigMap sizes: "
            "`path` is relative to the folder named after this SpamPolicy's namespace, so a "
            "policy reads only its own namespace's corpora. Every regular file (not "
            "recursive, hidden files skipped) is one raw RFC 5322 message.",
            "minItems": 1,
            "maxItems": MAX_GOLDEN_CONFIGMAPS,
            "items": _golden_set(
                "path", {"type": "string", "minLength": 1, "maxLength": 1024,
                         "description": "Relative path (no `..`, not absolute)."},
                "directory",
                [{"rule": "!self.path.startsWith('/') && "
                  "!self.path.matches('(^|/)[.][.](/|$)')",
                  "message": "path is relative to the namespace's folder: no leading / "
                  "and no .."}]),
        },
        "configMaps": {
            "type": "array",
            "description": "ConfigMaps (same namespace) whose every data and binaryData "
            "entry is one raw RFC 5322 message (the key names it).",
            "minItems": 1,
            "maxItems": MAX_GOLDEN_CONFIGMAPS,
            "items": _golden_set(
                "name", {"type": "string", "maxLength": 253, "description": "ConfigMap name."},
                "ConfigMap"),
        },
    },
}

CANARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Steps and guards of a canary rollout (strategy Canary).",
    "default": {},
    "properties": {
        "steps": {
            "type": "array", "minItems": 1, "maxItems": 10,
            "default": [{"weight": 10, "holdSeconds": 300}, {"weight": 50, "holdSeconds": 300}],
            "description": "The canary's share of the filter pods, step by step; each step "
            "holds at least holdSeconds and until guards.minSamples messages reached the "
            "canary pods. After the last step the new policy rolls out to every pod.",
            "items": {"type": "object", "required": ["weight"], "properties": {
                "weight": {"type": "integer", "minimum": 1, "maximum": 99,
                           "description": "Percent of all filter pods that serve the new "
                           "policy (at least one pod; traffic follows pod count)."},
                "holdSeconds": {"type": "integer", "minimum": 0, "maximum": 86400,
                                "default": 300,
                                "description": "Least time the step is held."}}},
        },
        "guards": {
            "type": "object",
            "description": "Limits the canary pods are held to, against the pods serving "
            "the previous policy (figures from both sides' /metrics, read at each resync "
            "and each canary check). Crossing one rolls the canary back.",
            "default": {},
            "properties": {
                "maxVerdictChangeRate": {
                    "type": "number", "minimum": 0, "maximum": 1, "default": 0.2,
                    "description": "Share of sampled messages whose action the new policy "
                    "changes (the canary pods also judge a sample with the previous policy, "
                    "at rollout.shadow.sampleRate)."},
                "maxRejectRateIncrease": {
                    "type": "number", "minimum": 0, "maximum": 1, "default": 0.05,
                    "description": "Canary share of REJECT verdicts minus the previous "
                    "policy's (0.05: five percentage points more)."},
                "maxErrorRateIncrease": {
                    "type": "number", "minimum": 0, "maximum": 1, "default": 0.01,
                    "description": "Canary share of calls answered with a gRPC error minus "
                    "the previous policy's."},
                "maxP99LatencyRatio": {
                    "type": "number", "minimum": 1, "default": 2.0,
                    "description": "Canary p99 classify latency over the previous policy's "
                    "(judged once both sides have minSamples), each counted as at least "
                    "p99LatencyFloorSeconds."},
                "p99LatencyFloorSeconds": {
                    "type": "number", "minimum": 0, "default": 0.05,
                    "description": "A p99 below this counts as this: differences under it "
                    "are not judged (new pods' first calls and millisecond histogram "
                    "buckets make them noise; mail servers wait seconds)."},
                "minSamples": {
                    "type": "integer", "minimum": 1, "default": 100,
                    "description": "Messages a side needs before a rate is judged; a step "
                    "does not advance before the canary pods have classified this many."},
            },
        },
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The policy and how it is served. Size: the validated policy and its "
    "model must fit one ConfigMap (1,000,000 bytes; PolicyTooLarge beyond), about 7,500 "
    "rules of 140 bytes. Client-side `kubectl apply` also copies the object into an "
    "annotation, and all annotations together must stay under 256 KiB: about 1,800 such "
    "rules; use `kubectl apply --server-side` (or create) for larger policies.",
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
                "signingKeySecretName": {
                    "type": "string", "maxLength": 253,
                    "description": "The store's signing-key Secret, mounted into the "
                    "filter pods only when `policy.authentication.bulkGate.enabled`, so "
                    "the gate can verify one-click tokens. Default: `<name>-signing-key` "
                    "(set it when the store's spec.signingKey.secretName differs)."},
            },
        },
        "goldenCorpus": GOLDEN_CORPUS_SCHEMA,
        "learning": learning.SCHEMA,
        "image": {"type": "string", "maxLength": 1024,
                  "description": "Filter server image. Default: the operator's "
                  "`--filter-image` (the chart sets it to the release's image)."},
        "imagePullPolicy": common.image_pull_policy(
            "Image pull policy of the filter container."),
        "imagePullSecrets": common.image_pull_secrets("the filter pods"),
        "serviceAccountName": common.service_account_name("the filter pods"),
        "replicas": common.replica_bounds(
            "Replica bounds. The HorizontalPodAutoscaler owns the actual count between them.",
            default_min=DEFAULT_MIN_REPLICAS, default_max=DEFAULT_MAX_REPLICAS, maximum=1000,
            min_description="Fewest replicas (at least 2 for high availability).",
            max_description="Most replicas the autoscaler may run."),
        "autoscaling": {
            "type": "object",
            "description": "Autoscaling targets. Scale-up is fast (doubling every 15 s, "
            "no stabilization) for mail surges; scale-down is slow (10% a minute after "
            "5 minutes of stability).",
            "default": {},
            "properties": {
                "cpuUtilization": common.cpu_utilization(),
                "requestsPerSecond": {
                    "type": "object",
                    "description": "Optional second target: average Classify requests per "
                    "second per pod, read as a Pods metric (needs a custom metrics adapter "
                    "such as prometheus-adapter exposing it). While the cluster serves no "
                    "custom.metrics.k8s.io API the target is left out of the "
                    "HorizontalPodAutoscaler (which would otherwise never scale down) and "
                    "Degraded says CustomMetricsUnavailable.",
                    "required": ["averageValue"],
                    "properties": {
                        "averageValue": {"type": "integer", "minimum": 1,
                                         "description": "Requests per second per pod."},
                        "metricName": {"type": "string", "maxLength": 253,
                                       "default": DEFAULT_RPS_METRIC,
                                       "description": "Name of the Pods metric."},
                    },
                },
                "scaleDownStabilizationSeconds": common.scale_down_stabilization(),
            },
        },
        "disruption": {
            "type": "object",
            "description": "Voluntary disruption budget (node drains, upgrades).",
            "default": {},
            "properties": {
                "maxUnavailable": common.positive_int_or_string(
                    "disruption.maxUnavailable",
                    "Pods that may be evicted at once (at least 1, or a percentage).", 1),
            },
        },
        "rollout": {
            "type": "object",
            "description": "Rolling update of policy and image changes; no pod is taken "
            "down before its replacement is ready (maxUnavailable is always 0).",
            "default": {},
            "properties": {
                "maxSurge": common.positive_int_or_string(
                    "rollout.maxSurge",
                    "Extra pods during a rollout (at least 1, or a percentage).", "25%"),
                "strategy": {
                    "type": "string", "enum": ["RollingUpdate", "Shadow", "Canary"],
                    "default": "RollingUpdate",
                    "description": "How a policy change takes effect. RollingUpdate: the "
                    "new policy rolls out at once. Shadow: the policy serving now keeps "
                    "answering while every filter pod also evaluates the new one on a "
                    "sample of real traffic (mailwarden_shadow_* metrics: verdict changes "
                    "by direction and rule); it is promoted by setting RollingUpdate or by "
                    "`kubectl annotate spampolicy NAME mailwarden.dev/promote-policy=HASH` "
                    "(status.shadowPolicyHash). Canary: the new policy serves on a second "
                    "Deployment (NAME-filter-canary) behind the same Services, growing "
                    "through rollout.canary.steps while rollout.canary.guards compare its "
                    "pods with the others; a guard crossed scales it to 0 (the previous policy "
                    "never stopped serving) and the same policy is not tried again; after "
                    "the last step it rolls out to every pod (status.canary, "
                    "status.lastRollback, condition CanaryRolledBack)."},
                "canary": CANARY_SCHEMA,
                "shadow": {
                    "type": "object",
                    "description": "Bounds of shadow evaluation (strategy Shadow).",
                    "default": {},
                    "properties": {
                        "sampleRate": {"type": "number", "minimum": 0, "maximum": 1,
                                       "default": 0.1,
                                       "description": "Share of messages also judged by "
                                       "the candidate."},
                        "cpuFraction": {"type": "number", "minimum": 0, "maximum": 1,
                                        "default": 0.1,
                                        "description": "Average share of one CPU per "
                                        "worker the shadow may use; samples beyond it are "
                                        "skipped (mailwarden_shadow_skipped_total)."},
                    },
                },
            },
        },
        "resources": {
            "type": "object",
            "description": "Compute resources of the filter container. Default: requests "
            "cpu 250m, memory 256Mi; limit memory 512Mi. A CPU request (or limit) is "
            "required: the autoscaler's target is a percentage of it.",
            "properties": common.resource_properties(),
            "x-kubernetes-validations": [{
                "rule": common.CPU_REQUESTED_RULE.format(r="self"),
                "message": common.CPU_REQUESTED_MESSAGE}],
        },
        "protocols": {
            "type": "array",
            "description": "What the filter pods speak: `grpc` (always), and the mail-server "
            "protocols `milter` (Postfix, Sendmail; port 11332), `spamd` (spamc, Exim "
            "`spam =`, amavis; Service port 783, container port 7830) and `rspamd` "
            "(Rspamd's /checkv2: rspamc, Haraka, Rspamd's proxy, Exim variant=rspamd; port "
            "11333). Each gets a container port and a port on both Services "
            "(docs/protocols.md).",
            "default": ["grpc"],
            "maxItems": len(naming.PROTOCOLS),
            "items": {"type": "string", "enum": list(naming.PROTOCOLS)},
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [
                {"rule": "'grpc' in self",
                 "message": "protocols must include grpc (the probes and clients use it)"}],
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
        "monitoring": common.monitoring(
            "Prometheus scraping of the filter pods' metrics port."),
        "scheduling": common.scheduling(
            "Where the filter pods may run. Pods always spread across zones and nodes.",
            pods="the pods"),
    },
}

CONDITION_SCHEMA = common.condition_schema(
    "Ready, Progressing, PolicyValid, Degraded, ApplyFailed, ScalingActive, AbleToScale, "
    "SuppressionReady or SuppressionFresh.")

CANARY_FIGURES = {
    "canaryPods": "Ready canary pods.",
    "canaryPodsRead": "Of those, pods whose /metrics were read.",
    "stablePods": "Ready pods of the previous policy.",
    "stablePodsRead": "Of those, pods whose /metrics were read.",
    "canaryMessages": "Messages the canary pods classified.",
    "stableMessages": "Messages the previous policy's pods classified.",
    "verdictChangeRate": "Share of the canary's sampled messages the new policy acted on "
    "differently.",
    "rejectRate": "Canary share of REJECT verdicts.",
    "stableRejectRate": "Previous policy's share of REJECT verdicts.",
    "errorRate": "Canary share of calls that ended in a gRPC error.",
    "stableErrorRate": "Previous policy's share of calls that ended in a gRPC error.",
    "p99Seconds": "Canary p99 classify latency.",
    "stableP99Seconds": "Previous policy's p99 classify latency.",
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
                       "description": "Ready, Progressing, PolicyValid, Degraded, "
                       "ApplyFailed (the API server refused a child: its message), and "
                       "SuppressionReady/SuppressionFresh when unsubscribeStoreRef is set."},
        "suppressionStore": {"type": "string",
                             "description": "HOST:PORT of the UnsubscribeStore the filter "
                             "pods read suppressions from (unsubscribeStoreRef)."},
        "policyHash": {"type": "string",
                       "description": "Content hash of the policy live on all replicas."},
        "desiredPolicyHash": {"type": "string",
                              "description": "Content hash of the newest valid policy."},
        "shadowPolicyHash": {"type": "string",
                             "description": "Content hash of the candidate the filter pods "
                             "evaluate in shadow (rollout.strategy Shadow); promote it with "
                             "the annotation mailwarden.dev/promote-policy=<this hash>."},
        "shadow": {
            "type": "object",
            "description": "How the shadowed candidate's verdicts compare with the live "
            "ones on sampled traffic, summed over the ready pods shadowing it now (read "
            "from their mailwarden_shadow_* metrics at each resync).",
            "properties": {
                "policyHash": {"type": "string", "description": "The candidate."},
                "pods": {"type": "integer", "description": "Ready pods shadowing it."},
                "podsRead": {"type": "integer",
                             "description": "Of those, pods whose metrics were read."},
                "sampled": {"type": "integer", "description": "Messages compared."},
                "stricter": {"type": "integer",
                             "description": "Of those, the candidate acted more severely."},
                "laxer": {"type": "integer",
                          "description": "Of those, the candidate acted less severely."},
                "skipped": {"type": "integer",
                            "description": "Samples skipped by the CPU or queue bound."},
                "topRules": {
                    "type": "array", "maxItems": 5,
                    "description": "Rules behind the most changed verdicts.",
                    "items": {"type": "object", "properties": {
                        "rule": {"type": "string", "description": "Rule name."},
                        "change": {"type": "string",
                                   "description": "added (fired only in the candidate) "
                                   "or removed (only live)."},
                        "direction": {"type": "string",
                                      "description": "stricter or laxer."},
                        "messages": {"type": "integer",
                                     "description": "Changed verdicts it was part of."}}},
                },
            },
        },
        "canary": {
            "type": "object",
            "description": "The canary rollout in progress (rollout.strategy Canary): all "
            "its state, so another operator replica carries on where this one stopped.",
            "properties": {
                "policyHash": {"type": "string", "description": "The new policy."},
                "stablePolicyHash": {"type": "string",
                                     "description": "The previous policy, serving on the "
                                     "other pods."},
                "step": {"type": "integer", "description": "Index in rollout.canary.steps."},
                "weight": {"type": "integer", "description": "The step's percent of pods."},
                "replicas": {"type": "integer", "description": "Canary pods wanted."},
                "startedAt": {"type": "string", "format": "date-time",
                              "description": "When the canary started."},
                "stepStartedAt": {"type": "string", "format": "date-time",
                                  "description": "When the step's canary pods were all "
                                  "available (its hold counts from there)."},
                "promoted": {"type": "boolean", "description": "Every step passed: the "
                             "new policy rolls out to every pod."},
                "figures": {
                    "type": "object", "description": "What the guards last judged.",
                    "properties": {key: {"type": "number", "description": text}
                                   for key, text in CANARY_FIGURES.items()},
                },
            },
        },
        "lastRollback": {
            "type": "object",
            "description": "The last canary rolled back, and why. That policy (its hash) "
            "is not tried again while it is named here; any edit is a new hash.",
            "properties": {
                "policyHash": {"type": "string", "description": "The policy rolled back."},
                "stablePolicyHash": {"type": "string",
                                     "description": "The policy that kept serving."},
                "guard": {"type": "string", "description": "The guard crossed."},
                "observed": {"type": "number", "description": "Its observed value."},
                "limit": {"type": "number", "description": "Its limit."},
                "step": {"type": "integer", "description": "The step it happened at."},
                "at": {"type": "string", "format": "date-time",
                       "description": "When the canary was scaled to 0."},
                "secondsAfterStepStart": {"type": "number",
                                          "description": "From the step's start (its pods "
                                          "available) to the rollback."},
            },
        },
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


def spampolicy_crd() -> dict[str, Any]:
    """The SpamPolicy CustomResourceDefinition."""
    return common.custom_resource_definition(
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
