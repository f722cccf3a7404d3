"""Where the node agent's binaries are: $MAILWARDEN_NODEAGENT_BIN, else scripts/nodeagent-build.sh
(which builds them into a cache keyed by the module's sources, or finds them built)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "nodeagent-build.sh"


class BuildError(RuntimeError):
    pass


def bin_dir(build: bool = True) -> Path:
    """The directory holding `nodeagent` and `podinit`. With build=False, only an existing build."""
    env = os.environ.get("MAILWARDEN_NODEAGENT_BIN")
    if env:
        path = Path(env)
        for name in ("nodeagent", "podinit"):
            if not (path / name).is_file():
                raise BuildError(f"MAILWARDEN_NODEAGENT_BIN={env} has no {name}")
        return path
    args = [str(SCRIPT)] + ([] if build else ["--print"])
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"{SCRIPT.name} failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])
