"""The control plane leaves nothing behind: not after `down`, not when the process that
started it is killed, not when it fails to start; and a failure says which component and why.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.cluster import ControlPlane, ControlPlaneError
from e2e.cluster.network import NetworkError
from e2e.cluster.procs import start_time

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def cli(workdir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "e2e.cluster", "--workdir", str(workdir),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def recorded_processes(workdir: Path) -> dict[str, tuple[int, int]]:
    state = json.loads((workdir / "state.json").read_text())
    return {name: (c["pid"], c["started"]) for name, c in state["components"].items()}


def alive(pid: int, started: int) -> bool:
    return start_time(pid) == started


def on_lo(address: str) -> bool:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                         text=True, check=True).stdout
    return f" {address}/32 " in out


def wait_gone(processes: dict[str, tuple[int, int]], timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = [name for name, (pid, started) in processes.items() if alive(pid, started)]
        if not left or time.monotonic() > deadline:
            return left


def test_cli_up_status_down_leaves_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "cli"
    up = cli(workdir, "up")
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={workdir / 'kubeconfigs' / 'admin.conf'}" in up.stdout
        processes = recorded_processes(workdir)
        assert set(processes) == {"etcd", "kube-apiserver", "kube-controller-manager",
                                  "kube-scheduler", "metrics-server"}
        status = cli(workdir, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("running (pid") == 5
        node = cli(workdir, "node-kubeconfig", "node-x", "--ip", "10.201.9.9")
        assert node.returncode == 0, node.stderr
        assert Path(node.stdout.strip()).is_file()
        state = json.loads((workdir / "state.json").read_text())
    finally:
        down = cli(workdir, "down")
    assert down.returncode == 0, down.stderr
    assert wait_gone(processes) == []
    assert processes_using(workdir) == []
    assert not on_lo(state["host_ip"])
    stopped = cli(workdir, "status")
    assert stopped.returncode == 3 and "stopped" in stopped.stdout


def test_killed_owner_takes_its_components_along(tmp_path: Path) -> None:
    workdir = tmp_path / "owned"
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from e2e.cluster import ControlPlane\n"
         f"ControlPlane({str(workdir)!r}).start()\n"
         "print('up', flush=True)\n"
         "time.sleep(600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        line = owner.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "up", owner.stderr.read()  # type: ignore[union-attr]
        processes = recorded_processes(workdir)
        assert len(processes) == 5
        owner.send_signal(signal.SIGKILL)  # no finaliser, no atexit: only the kernel acts
        owner.wait()
        assert wait_gone(processes) == []
        assert processes_using(workdir) == []
    finally:
        owner.kill()
        owner.wait()
        # What only a later run can clean: the address. `down` does it.
        ControlPlane.attach(workdir).stop()
    assert not on_lo(json.loads((workdir / "state.json").read_text())["host_ip"])


def processes_using(workdir: Path) -> list[str]:
    """Command lines of live processes that mention `workdir` (every component does)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(workdir).encode() in arg for arg in argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


def test_a_component_that_fails_is_named_with_its_log(tmp_path: Path) -> None:
    from e2e.cluster import bin_dir
    # The real binaries, except an API server that refuses to start.
    fake = tmp_path / "bin"
    fake.mkdir()
    for binary in bin_dir().iterdir():
        (fake / binary.name).symlink_to(binary)
    (fake / "kube-apiserver").unlink()
    (fake / "kube-apiserver").write_text("#!/bin/sh\necho 'E0101 refusing: disk on fire' >&2\n"
                                         "exit 3\n")
    (fake / "kube-apiserver").chmod(0o755)
    workdir = tmp_path / "bad"
    cp = ControlPlane(workdir, bin_dir=fake)
    with pytest.raises(ControlPlaneError) as caught:
        cp.start()
    message = str(caught.value)
    assert message.startswith("kube-apiserver exited with status 3 before ready")
    assert f"{workdir / 'logs' / 'kube-apiserver.log'}" in message
    assert "refusing: disk on fire" in message
    assert processes_using(workdir) == []   # etcd, already up, was stopped too
    assert not on_lo(cp.host_ip)


def test_overlapping_ranges_are_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match="service_cidr 10.244.0.0/20 overlaps cluster_cidr"):
        ControlPlane(tmp_path, service_cidr="10.244.0.0/20", cluster_cidr="10.244.0.0/16")
