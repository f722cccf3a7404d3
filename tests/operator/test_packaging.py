"""`operator/` installs as `mailwarden_operator` (all of it) and never shadows the standard
library's `operator`."""

from __future__ import annotations

import importlib.util
import operator
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_module_under_operator_is_importable_as_mailwarden_operator() -> None:
    sources = sorted((REPO / "operator").rglob("*.py"))
    assert len(sources) > 10
    for path in sources:
        parts = list(path.relative_to(REPO / "operator").with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        dotted = ".".join(["mailwarden_operator", *parts])
        spec = importlib.util.find_spec(dotted)
        assert spec is not None, f"{path} is not installed as {dotted}"
        assert Path(spec.origin).resolve() == path.resolve()


def test_every_subpackage_has_an_init() -> None:
    # setup.py finds subpackages by their __init__.py; a folder without one would be left out.
    for folder in (REPO / "operator").rglob("*"):
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), f"{folder} lacks __init__.py"


def test_the_standard_library_operator_is_not_shadowed() -> None:
    assert operator.add(2, 3) == 5
    # Even with the repository root first on sys.path (as `python -c` from it has).
    out = subprocess.run([sys.executable, "-c", "import operator; print(operator.__file__ "
                          "if hasattr(operator, '__file__') else 'builtin', operator.add(1, 1))"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "2" in out.split()[-1]
    assert str(REPO / "operator") not in out


def test_setup_lists_the_operator_subpackages() -> None:
    out = subprocess.run([sys.executable, "-c", "import runpy, setuptools; "
                          "setuptools.setup = lambda **kw: print(sorted(kw['packages']), "
                          "kw['package_dir']); runpy.run_path('setup.py')"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    for package in ("mailwarden_operator", "mailwarden_operator.common",
                    "mailwarden_operator.spampolicy", "mailwarden_operator.spampolicy.render",
                    "mailwarden_operator.unsubscribestore",
                    "mailwarden_operator.unsubscribestore.render"):
        assert f"'{package}'" in out, package
    assert "{'mailwarden_operator': 'operator'}" in out
    assert "'operator'" not in out.split("]")[0]
