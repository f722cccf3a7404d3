"""Figures of the e2e fault scenarios (issue 14), for the report.

Each fault test prints its figures and also appends them here, one JSON line per scenario
run, to `E2E_OUT/ha-figures.jsonl`; `scripts/fault-report.sh --e2e` turns the file into
docs/fault/ha-report.md. The tests assert their figures themselves: this is only the record.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def path() -> Path:
    return Path(os.environ.get("E2E_OUT", REPO / "e2e" / "out")) / "ha-figures.jsonl"


def record(scenario: str, **figures: Any) -> None:
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    line = {"scenario": scenario, "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            **figures}
    with target.open("a") as out:
        out.write(json.dumps(line, sort_keys=True, default=str) + "\n")


def long_profile() -> bool:
    """MAILWARDEN_E2E_PROFILE=long: the report's longer variants (scripts/fault-report.sh
    --e2e); CI runs the short ones."""
    return os.environ.get("MAILWARDEN_E2E_PROFILE", "short") == "long"
