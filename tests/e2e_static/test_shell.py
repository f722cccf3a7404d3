"""Every shell script in the repository passes shellcheck (the Debian package, installed by
scripts/bootstrap.sh), with no finding of any severity."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", ".cache", "node_modules", "out", "__pycache__"}
# Shell scripts the project must always have; a test below fails if one is not found.
EXPECTED = {"scripts/bootstrap.sh", "scripts/test.sh", "e2e/run.sh", ".ci/run"}


def shell_scripts() -> list[str]:
    found = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if any(part in SKIP_DIRS for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in (".sh", ".bash"):
            found.append(str(rel))
            continue
        if path.suffix == "" or rel.parts[0] == ".ci":
            with open(path, "rb") as handle:
                first = handle.readline(200)
            if first.startswith(b"#!") and (b"bash" in first or first.rstrip().endswith(b"/sh")):
                found.append(str(rel))
    return sorted(found)


def test_the_shell_scripts_are_found() -> None:
    assert EXPECTED <= set(shell_scripts()), shell_scripts()


@pytest.mark.parametrize("script", shell_scripts())
def test_shellcheck(script: str) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: run scripts/bootstrap.sh (Debian package)")
    result = subprocess.run([shellcheck, "--severity=style", "--external-sources", script],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
