"""What every scenario shares: the profile (short for CI, long for the report), the
environment (model, messages, work directory), and the result type with its checks and
figures."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testkit.procfs import load_average
from tests.fault.spec import Rendered, render

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"


@dataclass(frozen=True)
class Profile:
    name: str
    rate: float                 # Classify calls per second offered in steady state
    before: float               # seconds of steady load before a fault
    after: float                # seconds of load after recovery
    surge_seconds: float        # the ×5 surge
    overload_seconds: float     # the step beyond capacity ...
    overload_rate: float        # ... in large (512 KiB) messages per second
    barrage: int                # hostile messages
    unsub_before: float         # seconds of unsubscribes before the kill
    unsub_after: float          # seconds of unsubscribes after recovery
    surge_factor: float = 5.0
    deadline: float = 5.0       # per Classify call (the client's default)
    barrage_concurrency: int = 4
    barrage_deadline: float = 30.0
    unsub_writers: int = 4
    burst_waves: int = 2        # waves of large messages sent at once ...
    burst_concurrency: int = 60  # ... this many per wave (20 per replica) ...
    burst_mib: int = 20         # ... of this size, with this deadline (a sender gives a
    burst_deadline: float = 10.0  # message this large more time than ordinary mail)


PROFILES = {
    "short": Profile("short", rate=40, before=3, after=4, surge_seconds=5,
                     overload_seconds=3, overload_rate=300, barrage=3000,
                     unsub_before=2, unsub_after=3),
    "long": Profile("long", rate=40, before=10, after=15, surge_seconds=30,
                    overload_seconds=15, overload_rate=300, barrage=100_000,
                    unsub_before=10, unsub_after=10, burst_waves=10),
}


def profile_from_env() -> Profile:
    """MAILWARDEN_FAULT_PROFILE=long runs the long versions under pytest too."""
    name = os.environ.get("MAILWARDEN_FAULT_PROFILE", "short")
    if name not in PROFILES:
        raise ValueError(f"MAILWARDEN_FAULT_PROFILE must be one of {sorted(PROFILES)}, "
                         f"not {name!r}")
    return PROFILES[name]


class CorpusMissing(RuntimeError):
    pass


class FaultEnv:
    """Model, messages and a work directory, shared by the scenarios of one run."""

    def __init__(self, profile: Profile, workdir: Path | None = None) -> None:
        from mailwarden_local.errors import LocalError
        from mailwarden_local.model import ensure_model

        self.profile = profile
        self._own_workdir = workdir is None
        # Short paths: pods' policy directories and logs live here.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mailwarden-fault-"))
        try:
            self.model, _ = ensure_model(CACHE / "corpus", CACHE, lambda _line: None)
        except LocalError as exc:
            raise CorpusMissing(str(exc)) from None
        self.message_dirs = [CACHE / "split" / "test" / "ham", CACHE / "split" / "test" / "spam"]
        self._rendered: dict[int, Rendered] = {}

    def rendered(self, version: int = 1) -> Rendered:
        if version not in self._rendered:
            self._rendered[version] = render(self.profile.name, self.model,
                                             policy_version=version)
        return self._rendered[version]

    def dir(self, name: str) -> Path:
        path = self.workdir / f"{name}-{time.monotonic_ns()}"
        path.mkdir(parents=True)
        return path

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    key: str
    title: str
    profile: str
    figures: list[tuple[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    load_before: str = field(default_factory=load_average)
    load_after: str = ""
    seconds: float = 0.0
    plot: dict[str, Any] | None = None
    _started: float = field(default_factory=time.monotonic)

    def figure(self, label: str, value: object) -> None:
        self.figures.append((label, str(value)))

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(what, bool(ok), detail))
        return bool(ok)

    def finish(self) -> "ScenarioResult":
        self.load_after = load_average()
        self.seconds = time.monotonic() - self._started
        return self

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def text(self) -> str:
        lines = [f"== {self.title} [{self.profile}] — {'PASS' if self.ok else 'FAIL'} "
                 f"({self.seconds:.0f} s; load average {self.load_before} → {self.load_after})"]
        width = max((len(label) for label, _ in self.figures), default=0)
        lines += [f"   {label.ljust(width)}  {value}" for label, value in self.figures]
        lines += [f"   [{'ok' if c.ok else 'FAILED'}] {c.what}"
                  + (f": {c.detail}" if c.detail else "") for c in self.checks]
        return "\n".join(lines)

    def assert_ok(self) -> None:
        print("\n" + self.text())
        failed = self.failures()
        assert not failed, "; ".join(f"{c.what}: {c.detail}" for c in failed)
