"""Where Mailwarden's server time goes: py-spy attached to every server process during one
extra load level (not one of the measured ones: sampling costs a little CPU).

py-spy (the `bench` extra) samples Python stacks from outside the processes
(`--nonblocking`: it never pauses them) and keeps only samples of the thread holding the
GIL (`--gil`): where the Python CPU goes, without the many gRPC and thread-pool threads
that sit waiting. C code that keeps the GIL counts under the Python function that called
it; C code that releases it (gRPC core's network I/O) is not in the profile. The report
lists the functions with the largest share of samples, by self time (innermost Python
frame) and inclusive time.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.servers import Server, ServerSet, log_tail

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(servers: ServerSet, pid: int, seconds: float, raw: Path, log: Path) -> Server:
    binary = py_spy()
    if binary is None:
        raise FileNotFoundError("py-spy is not installed (pip install -e '.[bench]')")
    return servers.start("py-spy", [binary, "record", "--pid", str(pid), "--subprocesses",
                                    "--rate", "100", "--duration", str(max(1, round(seconds))),
                                    "--format", "raw", "--nonblocking", "--gil",
                                    "--output", str(raw)],
                         log=log)


def finish(servers: ServerSet, spy: Server, raw: Path, timeout: float = 60) -> None:
    try:
        spy.process.wait(timeout=timeout)
    finally:
        servers.stop(spy, grace=2)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile; last lines of {spy.log_path}:\n"
                           f"{log_tail(spy.log_path)}")


def _function(frame: str) -> str:
    """'Func (path/file.py:123)' -> 'Func (path/file.py)'."""
    return _LINE.sub(")", frame)


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by self and inclusive share of samples, from py-spy's raw output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith('"') and "(" in f]
        if not frames:
            continue
        total += count
        functions = [_function(f) for f in frames]
        own[functions[-1]] += count
        for name in set(functions):
            inclusive[name] += count
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}
    return {"samples": total,
            "self": [(name, n / total) for name, n in own.most_common(top)],
            "inclusive": [(name, n / total) for name, n in inclusive.most_common(top)]}
