"""setup.py installs every package of every component folder (one folder, one component),
under its folder name except `operator/` (`mailwarden_operator`), and nothing else: the test
kit, the tests and the benchmarks stay out of the distribution."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"mailwarden": "mailwarden", "filter_server": "filter_server",
           "unsubscribe_store": "unsubscribe_store", "mailwarden_local": "mailwarden_local",
           "operator": "mailwarden_operator"}


def _setup_packages() -> set[str]:
    out = subprocess.run([sys.executable, "-c", "import runpy, setuptools; "
                          "setuptools.setup = lambda **kw: print(repr(sorted(kw['packages']))); "
                          "runpy.run_path('setup.py')"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(ast.literal_eval(out.strip()))


def test_every_component_package_is_installed_and_nothing_else() -> None:
    expected = set()
    for folder, package in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            expected.add(".".join((package, *parts)))
    assert _setup_packages() == expected


def test_every_folder_with_python_code_is_a_package() -> None:
    # find_packages only sees folders with an __init__.py: a folder without one would be
    # left out of the wheel silently.
    for folder in FOLDERS:
        for directory in [REPO / folder, *(REPO / folder).rglob("*")]:
            if directory.is_dir() and directory.name != "__pycache__" \
                    and any(directory.glob("*.py")):
                assert (directory / "__init__.py").is_file(), f"{directory} lacks __init__.py"
