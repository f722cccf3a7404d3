"""Component processes: started with a log file each, watched while they come up, stopped
for sure.

Each component gets its own session (process group), so stopping it also stops anything
it spawned. A component started for a test also dies with the Python process
(PR_SET_PDEATHSIG): a test run that is killed outright leaves nothing behind either.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PR_SET_PDEATHSIG = 1
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_LINES = 25

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ComponentError(RuntimeError):
    """A component failed to start or to become healthy; the message says which, why, and
    ends with the tail of its log."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) or "    (log is empty)"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat):
    with the pid it names one process, never a later one that reused the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    netns: str | None = None         # network namespace it runs in (None: the host's)
    pid: int | None = None
    started: int | None = None       # start_time(pid), to recognise the process later
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, *, die_with_parent: bool) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n"
                      .encode())
            out.flush()
            try:
                self._popen = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=self.env, start_new_session=True,
                    preexec_fn=_die_with_parent if die_with_parent else None)
            except OSError as err:
                raise ComponentError(f"{self.name}: cannot start {self.argv[0]}: {err}") from err
        self.pid = self._popen.pid
        self.started = start_time(self.pid)

    def exit_code(self) -> int | None:
        """None while it runs (or if it is not ours to wait for and is still there)."""
        if self._popen is not None:
            return self._popen.poll()
        if self.pid is None or start_time(self.pid) != self.started:
            return -1
        return None

    def running(self) -> bool:
        return self.pid is not None and self.exit_code() is None

    def wait_until(self, check: Callable[[], str | None], *, what: str,
                   timeout: float) -> None:
        """Poll `check` (None: healthy; else why not) until it passes; fail at once if the
        process exits, or after `timeout` seconds with the last reason."""
        deadline = time.monotonic() + timeout
        reason = "not checked yet"
        while True:
            code = self.exit_code()
            if code is not None:
                raise ComponentError(f"{self.name} exited with status {code} before {what}; "
                                     f"last lines of {self.log}:\n{log_tail(self.log)}")
            reason = check()
            if reason is None:
                return
            if time.monotonic() >= deadline:
                raise ComponentError(f"{self.name} not {what} after {timeout:.0f} s "
                                     f"({reason}); last lines of {self.log}:\n"
                                     f"{log_tail(self.log)}")
            time.sleep(0.25)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to its process group, SIGKILL after `grace` seconds. Idempotent."""
        if self.pid is None or not self.running():
            self._reap()
            return
        pgid = self.pid  # it leads its own session
        self._signal(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.running():
            time.sleep(0.05)
        # The group too: a child it spawned must not outlive it.
        self._signal(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.running():
            time.sleep(0.05)
        self._reap()

    @staticmethod
    def _signal(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        if self._popen is not None:
            try:
                self._popen.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass

    def state(self) -> dict[str, object]:
        return {"pid": self.pid, "started": self.started, "log": str(self.log),
                "argv": self.argv, "netns": self.netns}

    @classmethod
    def from_state(cls, name: str, state: dict[str, object]) -> "Component":
        return cls(name=name, argv=list(state["argv"]), log=Path(str(state["log"])),  # type: ignore[arg-type]
                   pid=state.get("pid"), started=state.get("started"),  # type: ignore[arg-type]
                   netns=state.get("netns"))  # type: ignore[arg-type]
