"""Rendering the chart with the real `helm` and running the real `promtool` (both installed by
scripts/bootstrap.sh: helm in .cache/bin, promtool from Debian's `prometheus` package)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailwarden"
PROMETHEUS_RULE_API = ("--api-versions", "monitoring.coreos.com/v1/PrometheusRule")


def tool(name: str) -> str:
    found = shutil.which(name) or (REPO / ".cache" / "bin" / name)
    if not Path(found).is_file():
        pytest.fail(f"{name} not found: run scripts/bootstrap.sh (it installs helm in "
                    ".cache/bin and promtool with Debian's prometheus package)")
    return str(found)


def helm_template(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), "template", "mw", str(CHART), "-n", "mail-system",
                           *args], capture_output=True, text=True, timeout=120)


def render(*args: str) -> list[dict[str, Any]]:
    out = helm_template(*args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def rendered_rules(*args: str) -> dict[str, Any]:
    """The `spec` (rule groups) of the chart's PrometheusRule."""
    rules = by_kind(render(*PROMETHEUS_RULE_API, *args), "PrometheusRule")
    assert len(rules) == 1, "the chart rendered no PrometheusRule"
    return rules[0]["spec"]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)
