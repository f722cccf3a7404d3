"""The e2e suite on the kind provider, where it cannot run, says so in ONE line and runs
nothing; e2e/run.sh says which prerequisite is missing before it touches anything. The
process provider (the default, what scripts/test.sh runs) never skips.

The suite is started as a user would start it, `python -m pytest e2e` with
MAILWARDEN_E2E_PROVIDER=kind, with PATH pointing at stand-ins: a `docker` whose daemon is
down, or nothing at all. These stand-ins only answer `docker info` and `command -v`; no
cluster is created by this test."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from e2e import prereqs, providers

REPO = Path(__file__).resolve().parents[2]
DAEMON_DOWN = ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
               "Is the docker daemon running?")


def fake_tools(directory: Path, *, docker: str | None, others: tuple[str, ...] = ()) -> str:
    directory.mkdir()
    scripts = dict.fromkeys(others, "#!/bin/sh\nexit 0\n")
    if docker == "down":
        scripts["docker"] = f"#!/bin/sh\necho 'Client: fake' \necho '{DAEMON_DOWN}' >&2\nexit 1\n"
    elif docker == "up":
        scripts["docker"] = "#!/bin/sh\necho 27.0.0\nexit 0\n"
    for name, text in scripts.items():
        path = directory / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(directory)


def run_suite(path: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWARDEN_E2E_")}
    env["PATH"] = path
    env["MAILWARDEN_E2E_PROVIDER"] = "kind"
    return subprocess.run([sys.executable, "-m", "pytest", "e2e", "-q", "-rs",
                           "-p", "no:cacheprovider"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def suite_size() -> int:
    """Test items of e2e/test_*.py, as pytest collects them (parametrized ones included)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "e2e", "--collect-only", "-q",
                             "-p", "no:cacheprovider"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL,
                            env={**os.environ, "MAILWARDEN_E2E_PROVIDER": "process"})
    return sum(1 for line in result.stdout.splitlines() if "::" in line)


def the_skip_line(result: subprocess.CompletedProcess[str]) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = [line for line in output.splitlines() if "e2e: skipped — " in line]
    assert len(lines) == 1, output
    # Nothing ran: the whole suite is one skipped item, every test deselected.
    total = suite_size()
    assert total >= 10
    summary = [line for line in output.splitlines() if line.strip()][-1]
    assert re.fullmatch(rf"1 skipped, {total} deselected in [\d.]+s", summary), output
    return lines[0].split("e2e: skipped — ", 1)[1]


@pytest.mark.parametrize("case", ["nothing", "daemon-down"])
def test_the_kind_suite_skips_with_one_line_naming_what_is_missing(case: str,
                                                                   tmp_path: Path) -> None:
    if case == "nothing":
        reason = the_skip_line(run_suite(fake_tools(tmp_path / "bin", docker=None)))
        assert "no container engine (docker not installed)" in reason
        assert "kind not installed" in reason
    else:
        reason = the_skip_line(run_suite(fake_tools(tmp_path / "bin", docker="down")))
        assert f"no container engine (docker info failed: {DAEMON_DOWN})" in reason
        assert "kind not installed" in reason
    print(f"e2e: skipped — {reason}")


def test_with_every_tool_the_kind_provider_has_no_reason_to_skip(tmp_path: Path) -> None:
    path = fake_tools(tmp_path / "bin", docker="up", others=("kind", "kubectl", "helm"))
    assert prereqs.missing_tools(path) == []


def test_the_kind_suite_skips_here_with_one_line() -> None:
    """This machine as it is (real PATH), kind provider: no container engine, one skip."""
    if not prereqs.missing_tools():
        pytest.skip("this machine can run the kind suite (e2e/run.sh runs it)")
    reason = the_skip_line(run_suite(os.environ.get("PATH", "")))
    print(f"e2e: skipped — {reason}")


def test_the_process_provider_never_skips_and_unknown_providers_are_errors() -> None:
    assert providers.make("process").skip_reason() is None
    assert providers.DEFAULT == "process"
    with pytest.raises(providers.ProviderError, match="unknown e2e provider 'docker'"):
        providers.make("docker")


def test_run_sh_names_the_missing_prerequisites_and_changes_nothing(tmp_path: Path) -> None:
    bin_dir = fake_tools(tmp_path / "bin", docker="down")
    # Only what run.sh uses before its checks; /bin/bash runs it directly.
    for tool in ("dirname", "tail"):
        (tmp_path / "bin" / tool).symlink_to(subprocess.run(
            ["sh", "-c", f"command -v {tool}"], capture_output=True, text=True,
            check=True).stdout.strip())
    out_dir = tmp_path / "out"
    result = subprocess.run(["/bin/bash", str(REPO / "e2e" / "run.sh")], cwd=tmp_path,
                            env={"PATH": bin_dir, "E2E_OUT": str(out_dir), "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    print(result.stderr)
    assert result.returncode == 2
    assert "cannot run the e2e suite:" in result.stderr
    assert f"no container engine (docker info failed: {DAEMON_DOWN})" in result.stderr
    assert "kind not installed" in result.stderr
    assert not out_dir.exists()  # nothing created before the checks pass
