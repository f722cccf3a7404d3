"""The figures a canary is judged by, and the judgement (rollout.strategy Canary).

Each filter pod counts what it served in its own /metrics: verdicts by action, calls by
gRPC code, the classify latency histogram and, on canary pods, the shadow comparison with
the previous policy. A pod serves one policy for its whole life (the policy ConfigMap is
named by hash), so its counters since it started are that policy's: the canary pods' sums
are the new policy's figures and the other pods' sums the previous policy's, with no
baseline to keep (a restarted pod just starts counting again).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

from mailwarden import wire
from mailwarden_operator.common.kube import Kube, KubeError
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.suppression_health import PODS, _fetch, _ready, metrics_url

VERDICTS = "mailwarden_filter_verdicts_total"
LATENCY_BUCKETS = "mailwarden_filter_classify_duration_seconds_bucket"
SHADOW_VERDICTS = "mailwarden_shadow_verdicts_total"


@dataclass
class Figures:
    """One side's sums over its ready pods."""
    pods: int = 0
    pods_read: int = 0
    messages: float = 0.0
    rejects: float = 0.0
    calls: float = 0.0
    errors: float = 0.0
    shadow_sampled: float = 0.0
    shadow_changed: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count

    def add(self, other: "Figures") -> None:
        self.messages += other.messages
        self.rejects += other.rejects
        self.calls += other.calls
        self.errors += other.errors
        self.shadow_sampled += other.shadow_sampled
        self.shadow_changed += other.shadow_changed
        for le, count in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + count

    def p99(self) -> float | None:
        """The 99th percentile (the upper bound of its bucket), None without samples."""
        total = self.buckets.get(math.inf, 0.0)
        if total <= 0:
            return None
        for le in sorted(self.buckets):
            if self.buckets[le] >= 0.99 * total:
                return le
        return None


def parse(text: str) -> Figures:
    figures = Figures()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == VERDICTS:
                figures.messages += sample.value
                if sample.labels.get("action") == "REJECT":
                    figures.rejects += sample.value
            elif sample.name == wire.FILTER_REQUESTS_TOTAL:
                figures.calls += sample.value
                if sample.labels.get("code") != "OK":
                    figures.errors += sample.value
            elif sample.name == LATENCY_BUCKETS:
                le = float(sample.labels.get("le", "+Inf"))
                figures.buckets[le] = figures.buckets.get(le, 0.0) + sample.value
            elif sample.name == SHADOW_VERDICTS:
                figures.shadow_sampled += sample.value
                if sample.labels.get("direction") in ("stricter", "laxer"):
                    figures.shadow_changed += sample.value
    return figures


def is_canary_pod(pod: dict[str, Any]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return labels.get(naming.TRACK_LABEL) == naming.CANARY_TRACK


def _serves(pod: dict[str, Any], policy_hash: str) -> bool:
    annotations = pod["metadata"].get("annotations") or {}
    return annotations.get(naming.HASH_ANNOTATION) == policy_hash


def observe(kube: Kube, owner: dict[str, Any], candidate: str, stable: str, *,
            fetch: Callable[[str], str] = _fetch) -> tuple[Figures, Figures]:
    """(canary figures, previous policy's figures) from the ready pods of each side."""
    meta = owner["metadata"]
    canary, baseline = Figures(), Figures()
    try:
        pods = [p for p in kube.list(PODS, meta["namespace"],
                                     naming.selector_labels(meta["name"])) if _ready(p)]
    except KubeError:
        return canary, baseline
    sides = [(p, canary) for p in pods if is_canary_pod(p) and _serves(p, candidate)] + \
        [(p, baseline) for p in pods if not is_canary_pod(p) and _serves(p, stable)]
    if not sides:
        return canary, baseline

    def read(pod: dict[str, Any]) -> Figures | None:
        try:
            return parse(fetch(metrics_url(pod)))
        except Exception:  # unreachable, refused, garbage: counted as a pod not read
            return None

    with ThreadPoolExecutor(max_workers=min(16, len(sides)),
                            thread_name_prefix="canary-scrape") as pool:
        results = list(pool.map(lambda side: read(side[0]), sides))
    for (_, total), result in zip(sides, results):
        total.pods += 1
        if result is not None:
            total.pods_read += 1
            total.add(result)
    return canary, baseline


@dataclass(frozen=True)
class Crossed:
    """A guard the canary crossed."""
    guard: str
    observed: float
    limit: float

    def describe(self) -> str:
        return f"{self.guard} {self.observed:.4g} > limit {self.limit:.4g}"


def _rate(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def summary(canary: Figures, baseline: Figures) -> dict[str, float]:
    """status.canary.figures (rounded, so a status write means a real change)."""
    out = {"canaryPods": canary.pods, "canaryPodsRead": canary.pods_read,
           "stablePods": baseline.pods, "stablePodsRead": baseline.pods_read,
           "canaryMessages": canary.messages, "stableMessages": baseline.messages,
           "verdictChangeRate": _rate(canary.shadow_changed, canary.shadow_sampled),
           "rejectRate": _rate(canary.rejects, canary.messages),
           "stableRejectRate": _rate(baseline.rejects, baseline.messages),
           "errorRate": _rate(canary.errors, canary.calls),
           "stableErrorRate": _rate(baseline.errors, baseline.calls)}
    for key, side in (("p99Seconds", canary), ("stableP99Seconds", baseline)):
        value = side.p99()
        if value is not None and math.isfinite(value):
            out[key] = value
    return {key: round(float(value), 4) for key, value in out.items()}


def judge(guards: dict[str, Any], canary: Figures, baseline: Figures) -> Crossed | None:
    """The first guard crossed, or None. A rate is judged once the canary has minSamples
    of its denominator; the previous policy's rate counts as 0 until it has as many (the
    canary is then held to the limit alone: stricter, never laxer)."""
    enough = guards["minSamples"]

    def stable_rate(part: float, whole: float) -> float:
        return _rate(part, whole) if whole >= enough else 0.0

    if canary.shadow_sampled >= enough:
        observed = _rate(canary.shadow_changed, canary.shadow_sampled)
        if observed > guards["maxVerdictChangeRate"]:
            return Crossed("verdictChangeRate", observed, guards["maxVerdictChangeRate"])
    if canary.messages >= enough:
        observed = _rate(canary.rejects, canary.messages) - stable_rate(
            baseline.rejects, baseline.messages)
        if observed > guards["maxRejectRateIncrease"]:
            return Crossed("rejectRateIncrease", observed, guards["maxRejectRateIncrease"])
    if canary.calls >= enough:
        observed = _rate(canary.errors, canary.calls) - stable_rate(
            baseline.errors, baseline.calls)
        if observed > guards["maxErrorRateIncrease"]:
            return Crossed("errorRateIncrease", observed, guards["maxErrorRateIncrease"])
    mine, theirs = canary.p99(), baseline.p99()
    floor = guards["p99LatencyFloorSeconds"]
    if (canary.buckets.get(math.inf, 0.0) >= enough
            and baseline.buckets.get(math.inf, 0.0) >= enough
            and mine is not None and theirs is not None and math.isfinite(mine)
            and math.isfinite(theirs) and max(theirs, floor) > 0):
        observed = max(mine, floor) / max(theirs, floor)
        if observed > guards["maxP99LatencyRatio"]:
            return Crossed("p99LatencyRatio", observed, guards["maxP99LatencyRatio"])
    return None
