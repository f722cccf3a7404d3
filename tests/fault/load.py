"""Driving the load generator process from a scenario, and reading its records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Call:
    due: float          # when the call was scheduled (monotonic seconds)
    start: float        # when a thread began it
    end: float
    code: str           # gRPC status code name
    policy_hash: str    # of the answering policy; for failures, the status details
    kind: str = ""      # barrage: the kind of hostile message
    size: int = 0

    @property
    def latency(self) -> float:
        """From the scheduled start: includes any wait for a free load-generator thread."""
        return self.end - self.due

    @property
    def ok(self) -> bool:
        return self.code == "OK"


@dataclass(frozen=True)
class LoadResult:
    calls: list[Call]
    t0: float
    elapsed: float
    cpu_seconds: float

    @property
    def cpu_fraction(self) -> float:
        """Cores the load generator used on average (1.0 = one core busy)."""
        return self.cpu_seconds / self.elapsed if self.elapsed else 0.0

    def failed(self) -> list[Call]:
        return [c for c in self.calls if not c.ok]


def parse(path: Path) -> LoadResult:
    calls: list[Call] = []
    totals: dict = {}
    for line in path.read_text().splitlines():
        if not line:
            continue
        if line.startswith("#"):
            totals = json.loads(line[1:])
            continue
        parts = line.split("\t")
        extra = (parts[5], int(parts[6])) if len(parts) > 6 else ("", 0)
        calls.append(Call(float(parts[0]), float(parts[1]), float(parts[2]), parts[3],
                          parts[4], *extra))
    calls.sort(key=lambda c: c.due)
    return LoadResult(calls, totals.get("t0", 0.0), totals.get("elapsed", 0.0),
                      totals.get("cpu_seconds", 0.0))


class LoadGen:
    """One load generator process: start() returns once it has a ready replica and the
    first call is due; stop() ends it and returns the records."""

    def __init__(self, workdir: Path, target: str, *, phases: list[str] = (),
                 message_dirs: list[Path] = (), deadline: float = 5.0,
                 barrage: int = 0, concurrency: int = 4, seed: int = 1,
                 threads: int = 128, name: str = "load", bursts: int = 0,
                 burst_mib: int = 16,
                 client_options: dict[str, int] | None = None) -> None:
        self.out = Path(workdir) / f"{name}.tsv"
        self.log = Path(workdir) / f"{name}.log"
        args = [sys.executable, "-m", "tests.fault.loadgen", "--target", target,
                "--deadline", str(deadline), "--out", str(self.out),
                "--threads", str(threads)]
        for phase in phases:
            args += ["--phase", phase]
        for key, value in (client_options or {}).items():
            args += ["--client-option", f"{key}={value}"]
        for directory in message_dirs:
            args += ["--messages-dir", str(directory)]
        if barrage:
            args += ["--barrage", str(barrage), "--concurrency", str(concurrency),
                     "--seed", str(seed)]
        if bursts:
            args += ["--bursts", str(bursts), "--concurrency", str(concurrency),
                     "--burst-mib", str(burst_mib)]
        self.args = args
        self.process: subprocess.Popen | None = None
        self.t0 = 0.0

    def start(self, timeout: float = 90.0) -> "LoadGen":
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=REPO, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=log,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        line = b""
        os.set_blocking(self.process.stdout.fileno(), False)
        while not line.startswith(b"READY"):
            if self.process.poll() is not None:
                raise RuntimeError(f"load generator exited {self.process.returncode}: "
                                   + self.log.read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("load generator never got a ready replica")
            chunk = self.process.stdout.readline()
            if chunk:
                line = chunk
            else:
                time.sleep(0.02)
        self.t0 = float(line.split()[1])
        return self

    def wait(self, timeout: float) -> LoadResult:
        """Wait for a generator with finite phases (or a barrage) to finish."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"load generator still running after {timeout:g}s")
        return self._result()

    def stop(self, timeout: float = 60.0) -> LoadResult:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def _result(self) -> LoadResult:
        if self.process.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"load generator failed ({self.process.returncode}): "
                               + self.log.read_text(errors="replace")[-2000:])
        return parse(self.out)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)
