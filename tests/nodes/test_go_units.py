"""The node agent's Go tests (hack/nodeagent): DNS answers, resolv.conf/hosts, phases, and
real pods run by the runtime without an API server (root needed, as for the agent)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from e2e.nodes.build import REPO


# Compiling and linking the test binaries takes minutes on a cold Go cache (2 cores).
@pytest.mark.timeout(900)
def test_go_tests_of_the_node_agent_pass() -> None:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    # Same flags as scripts/nodeagent-build.sh: the k8s.io packages come from the build cache.
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local",
           "GOFLAGS": "-mod=readonly -buildvcs=false -trimpath"}
    result = subprocess.run([go, "test", "-count=1", "-timeout", "240s", "./..."],
                            cwd=REPO / "hack" / "nodeagent", env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
