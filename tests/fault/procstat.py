"""CPU time and memory of a process tree, read from /proc — what the kubelet's cAdvisor
reports for a container (the cgroup holds the whole tree), measured here without cgroups.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2:].split()


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children")
                        .read_text().split()]
            except OSError:
                continue
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (alive ones)."""
    seen, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        todo += children(current)
    return seen


@dataclass(frozen=True)
class TreeUsage:
    cpu_seconds: float   # user + system, every process of the tree
    rss_bytes: int       # resident memory, summed over the tree
    processes: int


def usage(pid: int) -> TreeUsage:
    cpu = 0.0
    rss = 0
    count = 0
    for member in tree(pid):
        fields = _stat_fields(member)
        if fields is None:
            continue
        # After the command: state is index 0, so utime (field 14) is index 11, stime 12,
        # rss (field 24, in pages) index 21.
        cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        rss += int(fields[21]) * PAGE_SIZE
        count += 1
    return TreeUsage(cpu, rss, count)


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def load_average() -> str:
    """`uptime`'s load averages (1, 5, 15 minutes), for the figures' context."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
