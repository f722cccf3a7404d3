"""Figures from call records: percentiles, time bins, and the disturbance window around a
fault."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from tests.fault.load import Call


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "–" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def latency_summary(calls: Iterable[Call]) -> dict[str, float]:
    latencies = [c.latency for c in calls]
    return {"n": len(latencies), "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95), "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else math.nan}


def codes(calls: Iterable[Call]) -> dict[str, int]:
    return dict(Counter(c.code for c in calls))


def between(calls: Iterable[Call], start: float, end: float) -> list[Call]:
    """Calls scheduled in [start, end)."""
    return [c for c in calls if start <= c.due < end]


@dataclass(frozen=True)
class Bin:
    start: float
    calls: int
    errors: int
    p50: float
    p99: float
    max: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


def bins(calls: Sequence[Call], width: float, origin: float) -> list[Bin]:
    """Calls grouped by scheduled time into bins of `width` seconds from `origin`."""
    if not calls:
        return []
    groups: dict[int, list[Call]] = {}
    for call in calls:
        groups.setdefault(int((call.due - origin) // width), []).append(call)
    out = []
    for index in range(min(groups), max(groups) + 1):
        group = groups.get(index, [])
        latencies = [c.latency for c in group]
        out.append(Bin(origin + index * width, len(group), sum(not c.ok for c in group),
                       percentile(latencies, 50), percentile(latencies, 99),
                       max(latencies) if latencies else math.nan))
    return out


@dataclass(frozen=True)
class Window:
    """Calls disturbed by a fault at `at`: failed, or slower than `threshold`."""
    at: float
    threshold: float
    disturbed: int
    failed: int
    seconds: float          # from the fault to the end of the last disturbed call
    worst: float            # the slowest call in the window


def disturbance(calls: Sequence[Call], at: float, threshold: float,
                join_gap: float = 0.25, horizon: float = 10.0) -> Window:
    """The window of disturbed calls that follows `at`: starting with calls in flight at
    the fault, a disturbed call extends it if it began within `join_gap` seconds of the
    window's current end. Isolated slow calls later on (this machine is shared) do not."""
    relevant = [c for c in calls if c.end >= at and c.due <= at + horizon]
    disturbed = sorted((c for c in relevant if not c.ok or c.latency > threshold),
                       key=lambda c: c.due)
    end = at
    members: list[Call] = []
    for call in disturbed:
        if call.due <= end + join_gap:
            members.append(call)
            end = max(end, call.end)
    worst = max((c.latency for c in members), default=0.0)
    return Window(at, threshold, len(members), sum(not c.ok for c in members),
                  end - at, worst)
