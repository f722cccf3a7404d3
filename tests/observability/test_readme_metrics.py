"""The README's metrics table names exactly the metrics the inventory of
docs/observability.md gives the filter server, the store and the operator (the inventory is
itself checked against scrapes of the real processes by test_inventory.py), with the same
labels — so users reading the README see every metric they can alert on, and no stale one."""

from __future__ import annotations

import re
from pathlib import Path

from tests.observability.inventory import load_inventory

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\|\s*`(mailwarden_[a-z0-9_]+)`(?:\s*\{([^}]*)\})?\s*\|")


def _readme_rows() -> dict[str, tuple[str, ...]]:
    text = README.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, ...]] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match.group(1) not in rows, f"README lists {match.group(1)} twice"
            labels = match.group(2) or ""
            rows[match.group(1)] = tuple(x.strip() for x in labels.split(",") if x.strip())
    return rows


def test_readme_lists_every_metric_of_the_shipped_processes_with_its_labels() -> None:
    shipped = {name: metric.labels for name, metric in load_inventory().items()
               if name.startswith("mailwarden_")
               and metric.components & {"filter", "store", "operator"}}
    listed = _readme_rows()
    assert sorted(set(shipped) - set(listed)) == [], "missing from the README's Metrics table"
    assert sorted(set(listed) - set(shipped)) == [], "in the README but not in the inventory"
    wrong = {n: (listed[n], shipped[n]) for n in shipped if listed[n] != shipped[n]}
    assert wrong == {}, "README labels (left) differ from the inventory's (right)"
