"""The SpamPolicy the fault suite serves, rendered by the operator's own renderers.

Everything the "cluster" on this machine does — which command and arguments a replica
runs, how its readiness is probed, how long preStop pauses, how long the kubelet waits
before SIGKILL, how many surge pods a rollout may add, how long a new pod must be ready
before it counts as available, the CPU request the HPA measures against — is read from the
rendered Deployment, headless Service and HPA, never written down here a second time.

The policy is the example SpamPolicy (`examples/spampolicy.yaml`) with its model trained on
the corpus' train split (the same cached model local mode uses). Two profiles set
`spec.server` timings: `short` (CI: a 1 s preStop, 2 s drain, 2 s grace, 10 s maximum
connection age) and `long` (the CRD defaults: 5 s, 10 s, 5 s, and the server's 15 s). Both run one worker per replica (`workers: 1`: three
replicas share this machine's two cores, like pods with a one-CPU limit), and both add the
optional requests-per-second HPA target so the rendered HPA carries both signals.
"""

from __future__ import annotations

import base64
import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.policy import PolicyBundle, build_bundle
from mailwarden_operator.common.render import RenderSettings
from mailwarden_operator.spampolicy.render.configmap import render_configmap
from mailwarden_operator.spampolicy.render.deployment import render_deployment
from mailwarden_operator.spampolicy.render.hpa import render_hpa
from mailwarden_operator.spampolicy.render.services import render_headless_service
from mailwarden_operator.spampolicy.spec import with_defaults

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "spampolicy.yaml"
NAMESPACE = "mail"
MODEL_CONFIGMAP = "mailwarden-model"

SERVER_SETTINGS = {
    # A 10 s maximum connection age: clients re-resolve that often, so a restarted replica
    # gets calls again within seconds rather than the default minute (see docs/fault.md).
    "short": {"workers": 1, "preStopSeconds": 1, "drainSeconds": 2, "graceSeconds": 2,
              "maxConnectionAgeMs": 10_000},
    "long": {"workers": 1},  # the CRD defaults (preStop, drain, grace; server's 15 s age)
}
# Requests per second per pod the rendered HPA aims at (a Pods metric through an adapter):
# the steady load (40/s over 3 pods) sits well under it, the ×5 surge (67/s a pod) over it.
RPS_TARGET = 50


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores, bytes)."""
    text = str(value)
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    decimal = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, factor in binary.items():
        if text.endswith(suffix):
            return float(text[:-2]) * factor
    for suffix, factor in decimal.items():
        if text.endswith(suffix):
            return float(text[:-1]) * factor
    return float(text)


def int_or_percent(value: int | str, total: int, round_up: bool) -> int:
    """Resolve an IntOrString such as maxSurge ('25%' of `total`) the way the Deployment
    controller does: surge rounds up, unavailability rounds down."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%"):
        exact = int(text[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


@dataclass(frozen=True)
class Rendered:
    """What the operator would apply for one policy version."""
    owner: dict[str, Any]
    bundle: PolicyBundle
    configmap: dict[str, Any]
    deployment: dict[str, Any]
    headless: dict[str, Any]
    hpa: dict[str, Any]

    @property
    def policy_hash(self) -> str:
        return self.bundle.hash

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        return self.pod_spec["containers"][0]

    @property
    def replicas(self) -> int:
        return int(self.deployment["spec"]["replicas"])

    def max_surge(self) -> int:
        rolling = self.deployment["spec"]["strategy"]["rollingUpdate"]
        return int_or_percent(rolling["maxSurge"], self.replicas, round_up=True)

    def max_unavailable(self) -> int:
        rolling = self.deployment["spec"]["strategy"]["rollingUpdate"]
        return int_or_percent(rolling["maxUnavailable"], self.replicas, round_up=False)

    @property
    def min_ready_seconds(self) -> float:
        return float(self.deployment["spec"].get("minReadySeconds", 0))

    @property
    def pre_stop_seconds(self) -> float:
        return float(self.container["lifecycle"]["preStop"]["sleep"]["seconds"])

    @property
    def termination_grace_seconds(self) -> float:
        return float(self.pod_spec["terminationGracePeriodSeconds"])

    def arg(self, flag: str) -> str:
        args = self.container["args"]
        return args[args.index(flag) + 1]

    @property
    def cpu_request_cores(self) -> float:
        return parse_quantity(self.container["resources"]["requests"]["cpu"])

    @property
    def memory_limit_bytes(self) -> float:
        return parse_quantity(self.container["resources"]["limits"]["memory"])

    @property
    def dns_name(self) -> str:
        """The headless Service's name as cluster DNS serves it."""
        meta = self.headless["metadata"]
        return f"{meta['name']}.{meta['namespace']}.svc.cluster.local"

    def hpa_targets(self) -> dict[str, float]:
        """{'cpu_utilization': percent of the request, 'rps_per_pod': requests/s} as the
        rendered HPA states them."""
        out: dict[str, float] = {}
        for metric in self.hpa["spec"]["metrics"]:
            if metric["type"] == "Resource" and metric["resource"]["name"] == "cpu":
                out["cpu_utilization"] = float(metric["resource"]["target"]["averageUtilization"])
            elif metric["type"] == "Pods":
                out["rps_per_pod"] = parse_quantity(metric["pods"]["target"]["averageValue"])
                out["rps_metric"] = metric["pods"]["metric"]["name"]  # type: ignore[assignment]
        return out


def spam_policy(profile: str, *, policy_version: int = 1) -> dict[str, Any]:
    """The SpamPolicy resource (spec defaulted as the API server would). `policy_version`
    2 is a policy change: the tag threshold moves, so the content hash changes."""
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": "default", "namespace": NAMESPACE,
                        "uid": "00000000-0000-4000-8000-00000000fa17"}
    spec = body["spec"]
    spec["replicas"] = {"min": 3, "max": 10}
    spec["server"] = copy.deepcopy(SERVER_SETTINGS[profile])
    spec.setdefault("autoscaling", {})["requestsPerSecond"] = {"averageValue": RPS_TARGET}
    if policy_version != 1:
        thresholds = spec["policy"]["thresholds"]
        thresholds["tag"] = thresholds["tag"] + 0.5 * (policy_version - 1)
    body["spec"] = with_defaults(spec)
    return body


def render(profile: str, model: bytes, *, policy_version: int = 1) -> Rendered:
    owner = spam_policy(profile, policy_version=policy_version)
    encoded = base64.b64encode(model).decode()

    def read_configmap(name: str) -> dict[str, Any]:
        if name != MODEL_CONFIGMAP:
            raise KeyError(name)
        key = owner["spec"]["policy"]["model"]["configMapRef"]["key"]
        return {"binaryData": {key: encoded}}

    bundle = build_bundle(owner["spec"]["policy"], read_configmap)
    return Rendered(owner=owner, bundle=bundle, configmap=render_configmap(owner, bundle),
                    deployment=render_deployment(owner, bundle.hash, RenderSettings()),
                    headless=render_headless_service(owner), hpa=render_hpa(owner))


__all__ = ["Rendered", "render", "spam_policy", "parse_quantity",
           "int_or_percent", "naming"]
