"""What the kind suite needs, and the one line it prints when something is missing.

`e2e/run.sh` makes the same checks in bash before it starts; this module is what the pytest
suite (e2e/conftest.py) and the static test of the skip (tests/e2e_static) use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_PREFIX = "e2e: skipped — "
# Set by e2e/run.sh once it has created the kind cluster: the suite never runs against
# whatever context a user's kubectl happens to point at (it drains nodes).
KUBECONFIG_ENV = "MAILWARDEN_E2E_KUBECONFIG"
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


def skip_reason(path: str | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The single skip line, or None when the suite can run."""
    environ = os.environ if environ is None else environ
    problems = missing_tools(path)
    if problems:
        return SKIP_PREFIX + "; ".join(problems)
    kubeconfig = environ.get(KUBECONFIG_ENV, "")
    if not kubeconfig or not Path(kubeconfig).is_file():
        return (SKIP_PREFIX + f"no e2e cluster (${KUBECONFIG_ENV} unset): run e2e/run.sh, "
                "which creates the kind cluster and runs this suite against it")
    return None
