"""What the kind provider needs (a container engine, kind, kubectl, helm), and the one line
the suite prints when something is missing.

`e2e/run.sh` makes the same checks in bash before it starts; this module is what the kind
provider (e2e/providers/kind.py) and the static test of the skip (tests/e2e_static) use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_PREFIX = "e2e: skipped — "
TOOLS = ("kind", "kubectl", "helm")


def tool_path() -> str:
    """PATH plus .cache/bin, where scripts/bootstrap.sh puts kubectl and helm."""
    return os.pathsep.join([os.environ.get("PATH", ""), str(REPO / ".cache" / "bin")])


def missing_tools(path: str | None = None) -> list[str]:
    """Human-readable reasons the suite cannot run here (empty: every tool is there)."""
    path = tool_path() if path is None else path
    problems = []
    docker = shutil.which("docker", path=path)
    if docker is None:
        problems.append("no container engine (docker not installed)")
    else:
        try:
            info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                                  capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
            failed = info.returncode != 0
            detail = (info.stderr.strip().splitlines() or ["exit status "
                                                           f"{info.returncode}"])[-1]
        except subprocess.TimeoutExpired:
            failed, detail = True, "no answer within 30 s"
        if failed:
            problems.append(f"no container engine (docker info failed: {detail})")
    problems += [f"{tool} not installed" for tool in TOOLS
                 if shutil.which(tool, path=path) is None]
    return problems
