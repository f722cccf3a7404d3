"""The metrics inventory of docs/observability.md, read from its tables: every table row whose
first cell is a backticked metric name, with columns Metric | Type | Labels | Component |
Meaning. Components: filter, store, operator (running processes), library (a collector no
shipped process registers), kube-state-metrics (external names the rules and dashboard use)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
ROW = re.compile(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|([^|]*)\|([^|]*)\|([^|]*)\|(.*)\|\s*$")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    labels: tuple[str, ...]
    components: frozenset[str]
    meaning: str


class Inventory(dict[str, Metric]):
    def of(self, component: str) -> dict[str, Metric]:
        return {n: m for n, m in self.items() if component in m.components}

    def series_names(self) -> set[str]:
        """Names a query may use: each metric, and a histogram's _bucket/_sum/_count."""
        out = set()
        for name, metric in self.items():
            out.add(name)
            if metric.type == "histogram":
                out.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        return out


def load_inventory(path: Path = DOC) -> Inventory:
    inventory = Inventory()
    for line in path.read_text().splitlines():
        match = ROW.match(line)
        if not match:
            continue
        name, kind, labels, components, meaning = (g.strip() for g in match.groups())
        if name in inventory:
            raise AssertionError(f"{path.name}: {name} is listed twice")
        inventory[name] = Metric(
            name, kind, tuple(re.findall(r"`([a-zA-Z_][a-zA-Z0-9_]*)`", labels)),
            frozenset(c.strip() for c in components.split(",") if c.strip()), meaning)
    return inventory
