"""The SpamPolicy's `SuppressionFresh` condition: are the filter pods' suppression answers
current?

Filter pods that follow an UnsubscribeStore mark each Classify answer SUPPRESSION_FRESH or
SUPPRESSION_STALE and export the same state as gauges on their metrics port. At a reconcile
the operator reads those gauges from every ready filter pod of the policy (the one place the
state lives; a pod's readiness must not depend on the store, and pods get no API write
access to report it) and summarises them:

- True  AllPodsFresh       every ready pod answers FRESH
- False SuppressionStale   some ready pods answer STALE (message: how many, data age, Watch)
- False NotFollowingStore  no pod is stale, but some do not follow the store (yet)
- Unknown NoReadyPods / MetricsUnreachable   nothing to ask, or some pods could not be read

The scrape needs read access to pods and network access to their metrics port.
"""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

from mailwarden import wire
from mailwarden_operator.common.kube import Kube, KubeError, Resource
from mailwarden_operator.spampolicy import naming

PODS = Resource("", "v1", "pods", "Pod")
CONDITION = "SuppressionFresh"
SCRAPE_TIMEOUT_SECONDS = 2.0
GAUGES = {
    wire.SUPPRESSION_CACHE_FRESH: "fresh",
    wire.SUPPRESSION_CACHE_AGE_SECONDS: "age",
    wire.SUPPRESSION_CACHE_CONNECTED: "connected",
    wire.SUPPRESSION_CACHE_LAG_SEQUENCES: "lag",
}


@dataclass(frozen=True)
class PodSuppression:
    """One pod's suppression gauges, or why they could not be read."""
    pod: str
    error: str | None = None
    fresh: float = 0.0
    age: float = 0.0
    connected: float = 0.0
    lag: float = 0.0

    @property
    def following(self) -> bool:
        # A filter without --suppression-store exports the gauges at 0 and never updates
        # them; a following one reports an age (1e9 before its first snapshot) or is fresh.
        return self.fresh == 1 or self.age > 0 or self.connected == 1


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return (not pod["metadata"].get("deletionTimestamp") and bool(status.get("podIP"))
            and any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or []))


def metrics_url(pod: dict[str, Any]) -> str:
    """http://<pod IP>:<the filter container's `metrics` port>/metrics."""
    port = naming.METRICS_PORT
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") != naming.CONTAINER_NAME:
            continue
        for item in container.get("ports") or []:
            if item.get("name") == "metrics" and item.get("containerPort"):
                port = int(item["containerPort"])
    host = pod["status"]["podIP"]
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_SECONDS) as response:
        return response.read(4 * 1024 * 1024).decode("utf-8", "replace")


def read_pod(pod: dict[str, Any], fetch: Callable[[str], str] = _fetch) -> PodSuppression:
    name = pod["metadata"]["name"]
    try:
        text = fetch(metrics_url(pod))
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in GAUGES:
                    values[GAUGES[sample.name]] = sample.value
    except Exception as exc:  # unreachable, refused, timeout, garbage: the pod is unknown
        return PodSuppression(name, error=f"{type(exc).__name__}: {exc}"[:200])
    if "fresh" not in values:
        return PodSuppression(name, error="no suppression gauges in its /metrics")
    return PodSuppression(name, fresh=values["fresh"], age=values.get("age", 0.0),
                          connected=values.get("connected", 0.0), lag=values.get("lag", 0.0))


def summarize(results: list[PodSuppression], store: str) -> tuple[str, str, str, str]:
    """The condition (type, status, reason, message) for what the pods said."""
    if not results:
        return (CONDITION, "Unknown", "NoReadyPods", "no ready filter pod to ask")
    read = [r for r in results if r.error is None]
    failed = [r for r in results if r.error is not None]
    stale = [r for r in read if r.following and r.fresh != 1]
    not_following = [r for r in read if not r.following]
    total = len(results)
    # Messages carry counts, not ages: a status that changed at every reconcile would be
    # rewritten every resync (the ages are in the pods' metrics and in every response).
    if stale:
        never = sum(1 for r in stale if r.age >= 1e9)
        down = sum(1 for r in stale if r.connected != 1)
        message = (f"{len(stale)} of {total} ready filter pods answer SUPPRESSION_STALE "
                   f"(Watch to UnsubscribeStore {store} down on {down}"
                   + (f", {never} never loaded" if never else "") +
                   "): senders defer bulk mail to recipients those pods do not list")
        if failed:
            message += f"; {len(failed)} pods could not be read"
        return (CONDITION, "False", "SuppressionStale", message)
    if failed:
        example = failed[0]
        return (CONDITION, "Unknown", "MetricsUnreachable",
                f"could not read /metrics of {len(failed)} of {total} ready filter pods "
                f"(e.g. {example.pod}: {example.error}); the operator needs network access "
                "to their metrics port")
    if not_following:
        return (CONDITION, "False", "NotFollowingStore",
                f"{len(not_following)} of {total} ready filter pods do not follow "
                f"UnsubscribeStore {store} yet (started before the reference was added, or "
                "starting): their answers say SUPPRESSION_DISABLED")
    return (CONDITION, "True", "AllPodsFresh",
            f"all {total} ready filter pods answer SUPPRESSION_FRESH from UnsubscribeStore "
            f"{store}")


def observe(kube: Kube, owner: dict[str, Any], *,
            fetch: Callable[[str], str] = _fetch) -> tuple[str, str, str, str] | None:
    """The SuppressionFresh condition of a SpamPolicy, or None when it follows no store."""
    ref = (owner.get("spec") or {}).get("unsubscribeStoreRef") or {}
    if not ref.get("name"):
        return None
    meta = owner["metadata"]
    try:
        pods = [p for p in kube.list(PODS, meta["namespace"],
                                     naming.selector_labels(meta["name"])) if _ready(p)]
    except KubeError as exc:
        return (CONDITION, "Unknown", "PodsUnreadable", f"cannot list the filter pods: {exc}")
    if not pods:
        return summarize([], ref["name"])
    with ThreadPoolExecutor(max_workers=min(16, len(pods)),
                            thread_name_prefix="suppression-scrape") as pool:
        results = list(pool.map(lambda p: read_pod(p, fetch), pods))
    return summarize(results, ref["name"])
