"""The static checks of the product packages, so that a finding fails CI (`.ci/run`):

- `lint-imports`: the import contracts in pyproject.toml (the layers of the repository and
  of each component, the components' independence, the contract importing nothing);
- `ruff check`: lint and import order;
- `mypy`: types.

Configuration: pyproject.toml (`[tool.importlinter]`, `[tool.ruff]`, `[tool.mypy]`)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PRODUCT = ["mailwarden", "filter_server", "unsubscribe_store", "operator", "mailwarden_local"]

pytestmark = pytest.mark.timeout(900)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=840)


def test_import_contracts_hold() -> None:
    result = _run([str(BIN / "lint-imports"), "--no-cache"])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " 0 broken" in result.stdout


def test_ruff_finds_nothing() -> None:
    result = _run([str(BIN / "ruff"), "check", "--no-cache", *PRODUCT])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_mypy_finds_nothing() -> None:
    # mypy reaches the folder `operator/` as the package `mailwarden_operator` (setup.py's
    # mapping) through this link, on the path pyproject.toml gives it.
    link = REPO / ".cache" / "typecheck" / "mailwarden_operator"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(Path("..", "..", "operator"))
    result = _run([str(BIN / "mypy"), "--cache-dir", str(REPO / ".cache" / "mypy")])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_the_contract_forbids_every_contract_module_to_import_the_rest() -> None:
    """The contract's import-linter source list names every module of `mailwarden` but its
    CLI, so a new contract module is covered the day it is added."""
    contract = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"]
                    if c["name"].startswith("The contract (mailwarden"))
    tops = {p.stem if p.is_file() else p.name for p in (REPO / "mailwarden").iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").is_file())
            and p.name not in ("__init__.py", "cli.py", "commands", "__pycache__")}
    assert {f"mailwarden.{t}" for t in tops} == set(contract["source_modules"])


def test_no_module_named_operator_is_importable_from_the_repository_root() -> None:
    # The standard library's `operator` must never be shadowed (the folder has no
    # __init__.py-less escape hatch: setup.py maps it, nothing imports it by folder name).
    for path in (REPO / "operator").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("operator."), f"{path}: {node.module}"
