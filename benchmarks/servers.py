"""Starting and stopping the servers under test, so that nothing is left running.

Every server is a `ServerProcess` (testkit.processes, the one "start a process and
wait until it serves" of the repository): its own session (its own process group), its
output in a log file.
`ServerSet` is a context manager: leaving it — normally, on an exception, on Ctrl-C or on
SIGTERM (see `benchmarks.run`) — sends SIGTERM to every group, waits, then SIGKILLs
whatever is left, including descendants that moved to another group.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

from testkit import procfs
from testkit.processes import ServerFailed, ServerProcess, free_port

# A server under test; `ServerFailed`: it did not start (or died), with its log tail.
Server = ServerProcess
__all__ = ["Server", "ServerFailed", "ServerSet", "chown_tree", "free_port", "log_tail",
           "port_open", "service_user"]


def service_user(name: str) -> pwd.struct_passwd | None:
    """The Debian package's system user when we are root (servers drop to it), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return pwd.getpwnam("nobody")


def chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _user_args(user: pwd.struct_passwd | None) -> dict:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _kill_group(pgid: int, grace: float) -> list[int]:
    """SIGTERM the group and its descendants, wait up to `grace`, SIGKILL the rest.
    Returns the pids that were still there after SIGKILL (should be none). Zombies count
    as gone: their parent (us, for the group leader) reaps them. A pid is only signalled
    while it still belongs to the process we found (same start time), never to a later
    process that reused it."""
    found = {pid: procfs.start_time(pid)
             for pid in procfs.tree([pgid]) | procfs.group_members(pgid)}

    def ours() -> set[int]:
        now = procfs.tree([pgid]) | procfs.group_members(pgid)
        return {p for p in set(found) | now
                if procfs.exists(p) and (p not in found
                                             or procfs.start_time(p) == found[p])}

    def signal_all(sig: int) -> None:
        for pid in ours():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not ours():
            return []
        time.sleep(0.05)
    signal_all(signal.SIGKILL)
    time.sleep(0.2)
    return sorted(ours())


class ServerSet:
    """Owns every server process the benchmark starts."""

    def __init__(self, progress: Callable[[str], None] = print) -> None:
        self.servers: list[Server] = []
        self.progress = progress
        self.leftovers: list[str] = []

    def start(self, name: str, argv: Sequence[str], *, log: Path,
              user: pwd.struct_passwd | None = None, env: dict[str, str] | None = None,
              cwd: Path | None = None, port_file: Path | None = None) -> Server:
        server = ServerProcess(name, argv, log_path=log, port_file=port_file, env=env, cwd=cwd,
                               popen_kwargs=_user_args(user)).start()
        self.servers.append(server)
        return server

    def run(self, name: str, argv: Sequence[str], *, log: Path,
            user: pwd.struct_passwd | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 3600) -> None:
        """Run a one-shot command (training) to completion, output appended to `log`.
        It is registered like a server while it runs, so an interrupted benchmark stops
        it too (training runs in threads; only the main thread sees Ctrl-C)."""
        proc = self.start(name, argv, log=log, user=user, env=env, cwd=cwd)
        assert proc.process is not None
        try:
            status = proc.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc, grace=2.0)
            raise ServerFailed(f"{name} did not finish within {timeout:.0f}s") from None
        if proc in self.servers:
            self.servers.remove(proc)
        if status != 0:
            raise ServerFailed(f"{name} exited with status {status}; last lines of {log}:\n"
                               f"{log_tail(log)}")

    def stop(self, server: Server, grace: float = 10.0) -> None:
        if server not in self.servers:
            return
        self.servers.remove(server)
        left = _kill_group(server.pid, grace)
        if server.process is not None and server.process.poll() is None:
            try:
                server.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        if left:
            self.leftovers.append(f"{server.name}: pids {left} survived SIGKILL")

    def stop_all(self) -> None:
        for server in reversed(list(self.servers)):
            self.stop(server)

    def __enter__(self) -> "ServerSet":
        return self

    def __exit__(self, *exc: object) -> None:
        # A second Ctrl-C or SIGTERM during teardown must not leave servers behind:
        # finish the teardown first.
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
