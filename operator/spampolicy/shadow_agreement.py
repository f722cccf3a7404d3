"""`status.shadow`: how the candidate's verdicts compare with the live ones, summed over
the filter pods that shadow it (rollout.strategy Shadow).

Each pod counts its sampled comparisons (filter_server/server/shadow.py); at a reconcile the
operator reads those counters from every ready pod whose template names the candidate and
writes the sums, so `kubectl get spampolicy -o yaml` shows the agreement next to the hash
to promote. Counters live in the pods: a pod that goes away (scale-down, eviction) takes
its counts with it, so the figures are those of the pods running now.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

from mailwarden_operator.common.kube import Kube, KubeError
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.suppression_health import PODS, _fetch, _ready, metrics_url

VERDICTS = "mailwarden_shadow_verdicts_total"
RULE_CHANGES = "mailwarden_shadow_rule_changes_total"
SKIPPED = "mailwarden_shadow_skipped_total"
DIRECTIONS = ("stricter", "laxer", "same")
TOP_RULES = 5


def _shadowing(pod: dict[str, Any], candidate: str) -> bool:
    annotations = pod["metadata"].get("annotations") or {}
    return annotations.get(naming.SHADOW_HASH_ANNOTATION) == candidate


def _read(pod: dict[str, Any], fetch: Callable[[str], str]) -> dict[str, Any] | None:
    try:
        text = fetch(metrics_url(pod))
        counts: dict[str, float] = {d: 0.0 for d in DIRECTIONS}
        counts["skipped"] = 0.0
        rules: dict[tuple[str, str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == VERDICTS:
                    counts[sample.labels.get("direction", "same")] = \
                        counts.get(sample.labels.get("direction", "same"), 0.0) + sample.value
                elif sample.name == SKIPPED:
                    counts["skipped"] += sample.value
                elif sample.name == RULE_CHANGES:
                    key = (sample.labels.get("rule", ""), sample.labels.get("change", ""),
                           sample.labels.get("direction", ""))
                    rules[key] = rules.get(key, 0.0) + sample.value
    except Exception:  # unreachable, refused, garbage: counted as a pod not read
        return None
    return {"counts": counts, "rules": rules}


def observe(kube: Kube, owner: dict[str, Any], candidate: str, *,
            fetch: Callable[[str], str] = _fetch) -> dict[str, Any]:
    """The `status.shadow` summary for the pods shadowing `candidate`."""
    meta = owner["metadata"]
    summary: dict[str, Any] = {"policyHash": candidate, "pods": 0, "podsRead": 0,
                               "sampled": 0, "stricter": 0, "laxer": 0, "skipped": 0,
                               "topRules": []}
    try:
        pods = [p for p in kube.list(PODS, meta["namespace"],
                                     naming.selector_labels(meta["name"]))
                if _ready(p) and _shadowing(p, candidate)]
    except KubeError:
        return summary
    summary["pods"] = len(pods)
    if not pods:
        return summary
    with ThreadPoolExecutor(max_workers=min(16, len(pods)),
                            thread_name_prefix="shadow-scrape") as pool:
        results = [r for r in pool.map(lambda p: _read(p, fetch), pods) if r is not None]
    summary["podsRead"] = len(results)
    rules: dict[tuple[str, str, str], float] = {}
    for result in results:
        counts = result["counts"]
        summary["sampled"] += int(sum(counts[d] for d in DIRECTIONS))
        summary["stricter"] += int(counts["stricter"])
        summary["laxer"] += int(counts["laxer"])
        summary["skipped"] += int(counts["skipped"])
        for key, value in result["rules"].items():
            rules[key] = rules.get(key, 0.0) + value
    top = sorted(rules.items(), key=lambda item: (-item[1], item[0]))[:TOP_RULES]
    summary["topRules"] = [{"rule": rule, "change": change, "direction": direction,
                            "messages": int(count)}
                           for (rule, change, direction), count in top]
    return summary
