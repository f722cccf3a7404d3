"""CPU time and memory of a server and all its descendants, read from /proc — what the
kubelet's cAdvisor reports for a container (the cgroup holds the whole tree), measured here
without cgroups. Shared by the tests, the fault suite and the benchmarks.

CPU seconds of a process tree = for every live process in it, utime + stime (its own) +
cutime + cstime (its children that exited and were reaped). A worker that exits between
two readings moves its time into its parent's cutime, so the sum is conserved — spamd
recycles its children, and all of them are counted.

Memory: the sum of VmRSS over the tree (counts pages shared between forked workers once
per worker, so it overstates prefork servers) and the sum of Pss from smaps_rollup (shared
pages divided among their sharers: the fair figure). `MemorySampler` keeps the peaks.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Iterable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(")") + 2:].split()
    return rest  # rest[0] is field 3 (state)


def exists(pid: int) -> bool:
    """True while `pid` runs (a zombie does not count)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot): tells a process from a later one that
    reused its pid."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None  # stat field 22


def _all_stats() -> dict[int, list[str]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and fields[0] not in ("Z", "X"):
                out[int(entry)] = fields
    return out


def tree(roots: Iterable[int]) -> set[int]:
    """The live processes among `roots` and all their descendants."""
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    out: set[int] = set()
    todo = [r for r in roots if r in stats]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.add(pid)
        todo.extend(children.get(pid, ()))
    return out


def group_members(pgid: int) -> set[int]:
    return {pid for pid, fields in _all_stats().items() if int(fields[2]) == pgid}


def cpu_seconds(roots: Iterable[int]) -> float:
    """User + system CPU seconds used so far by the trees under `roots` (see module doc)."""
    total = 0
    for pid in tree(roots):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # fields[11..14] are utime, stime, cutime, cstime (stat fields 14..17)
        total += sum(int(x) for x in fields[11:15])
    return total / CLOCK_TICKS


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def peak_rss_kib(pid: int) -> int:
    """The largest resident set `pid` has had so far (VmHWM): catches a peak between two
    samples."""
    return _status_kib(pid, "VmHWM:")


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS:")


@dataclass
class Memory:
    rss_kib: int = 0
    pss_kib: int = 0
    processes: int = 0


def memory(roots: Iterable[int]) -> Memory:
    pids = tree(roots)
    return Memory(sum(_status_kib(p, "VmRSS:") for p in pids),
                  sum(_pss_kib(p) for p in pids), len(pids))


class MemorySampler:
    """Samples the memory of the trees under `roots` in a thread; keeps the peaks."""

    def __init__(self, roots: Iterable[int], interval: float = 0.25) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.peak = Memory()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _sample(self) -> None:
        m = memory(self.roots)
        self.peak = Memory(max(self.peak.rss_kib, m.rss_kib), max(self.peak.pss_kib, m.pss_kib),
                           max(self.peak.processes, m.processes))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "MemorySampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@dataclass(frozen=True)
class TreeUsage:
    cpu_seconds: float   # user + system of the live processes of the tree (own time only)
    rss_bytes: int       # resident memory, summed over the tree
    processes: int


def usage(pid: int) -> TreeUsage:
    """CPU (own time of the live processes, without reaped children's) and resident memory
    of `pid`'s tree: the figures the fault suite compares with what a server exports."""
    cpu = 0.0
    rss = 0
    count = 0
    for member in tree([pid]):
        fields = _stat_fields(member)
        if fields is None:
            continue
        # fields[11], [12]: utime, stime (stat fields 14, 15); fields[21]: rss in pages
        # (stat field 24).
        cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        rss += int(fields[21]) * PAGE_SIZE
        count += 1
    return TreeUsage(cpu, rss, count)



def load_average() -> str:
    """`uptime`'s load averages (1, 5, 15 minutes), for the figures' context."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
