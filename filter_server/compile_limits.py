"""Bounds on what compiling a policy's patterns may cost (issue 20, item 13).

Hyperscan matches in linear time, but compiling can be slow: a counted repetition of a
character class costs about as much as its count squared (`[^a]{2000}b` 1.5 s alone; a
625-byte SpamPolicy of such patterns took 21 s in the admission webhook, whose timeout is
10 s), and so can a pattern of hundreds of alternatives with `.*` in each. Two bounds:

- **Complexity, checked before compiling**: no counted repetition may repeat its atom more
  than MAX_COUNTED_REPEAT times, nested repetitions multiplied (`(a.{20}){20}` counts
  400). At the bound, the slowest shape measured compiles in about 0.25 s.
- **Compile time, measured**: validation compiles in a child process (a fresh interpreter,
  ~40 ms to start) that the kernel stops when it has used the CPU time allowed
  (RLIMIT_CPU): COMPILE_SECONDS_BASE plus COMPILE_SECONDS_PER_RULE per rule, several
  times what ordinary rules take (about 1 ms each). CPU time, not wall-clock time, so a
  policy is not refused because the machine was busy (under a load of 15 on 2 cores a
  wall-clock limit refused a one-rule policy); a wall-clock backstop of
  WALL_SECONDS_FACTOR times as long ends a child that hangs. Compilation gives back no
  CPU it holds until it ends, so a thread could only be abandoned, never stopped; a
  process can. The compiled databases come back serialized (as for the pattern cache),
  so nothing is compiled twice.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
import sys

MAX_COUNTED_REPEAT = 250
COMPILE_SECONDS_BASE = 5.0
COMPILE_SECONDS_PER_RULE = 0.005
WALL_SECONDS_FACTOR = 10


def compile_seconds_for(rule_count: int) -> int:
    """The CPU seconds validation allows for compiling a policy of `rule_count` pattern
    rules (whole seconds: what RLIMIT_CPU counts in)."""
    return math.ceil(COMPILE_SECONDS_BASE + COMPILE_SECONDS_PER_RULE * rule_count)


# --- complexity -------------------------------------------------------------------------
_BRACED_ESCAPES = "xpPoN"  # \x{..}, \p{..}, \P{..}, \o{..}, \N{..}


def counted_repeat(pattern: str) -> int:
    """The largest number of times a counted repetition (`{m}`, `{m,}`, `{m,n}`) repeats
    its atom in `pattern`, nested repetitions multiplied; 1 without any. A reading of PCRE
    syntax good enough for this bound: escapes, character classes, \\Q...\\E, comments and
    groups are skipped as units; anything it misreads is still caught by the compile-time
    bound."""
    groups: list[int] = [1]   # the largest repetition inside each open group
    largest = 1
    i, size = 0, len(pattern)
    while i < size:
        char = pattern[i]
        atom = 1
        if char == "\\":
            if pattern.startswith("\\Q", i):
                end = pattern.find("\\E", i + 2)
                i = size if end < 0 else end + 2
            elif i + 2 < size and pattern[i + 1] in _BRACED_ESCAPES and pattern[i + 2] == "{":
                end = pattern.find("}", i + 3)
                i = size if end < 0 else end + 1
            else:
                i += 2
        elif char == "[":
            i = _class_end(pattern, i)
        elif char == "(":
            if pattern.startswith("(?#", i):
                end = pattern.find(")", i)
                i = size if end < 0 else end + 1
                continue
            groups.append(1)
            i += 1
            continue
        elif char == ")" and len(groups) > 1:
            atom = groups.pop()
            i += 1
        else:
            i += 1
        count, i = _quantifier(pattern, i)
        atom *= count
        largest = max(largest, atom)
        groups[-1] = max(groups[-1], atom)
    return largest


def _class_end(pattern: str, start: int) -> int:
    """Index after the character class opening at `start`."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":  # a leading "]" is a literal
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
        elif pattern.startswith("[:", i):
            end = pattern.find(":]", i + 2)
            i = i + 1 if end < 0 else end + 2
        elif pattern[i] == "]":
            return i + 1
        else:
            i += 1
    return i


def _quantifier(pattern: str, i: int) -> tuple[int, int]:
    """(how many times the atom before `i` is counted, index after its quantifier)."""
    if i < len(pattern) and pattern[i] == "{":
        end = pattern.find("}", i)
        if end > i:
            low, comma, high = pattern[i + 1:end].partition(",")
            if low.isdigit() and (not high or high.isdigit()):
                count = int(high) if high else int(low)
                return max(1, count), _lazy_or_possessive(pattern, end + 1)
    if i < len(pattern) and pattern[i] in "*+?":
        return 1, _lazy_or_possessive(pattern, i + 1)
    return 1, i


def _lazy_or_possessive(pattern: str, i: int) -> int:
    return i + 1 if i < len(pattern) and pattern[i] in "?+" else i


def complexity_problem(pattern: str) -> str | None:
    """Why `pattern` is too costly to compile, or None."""
    count = counted_repeat(pattern)
    if count > MAX_COUNTED_REPEAT:
        return (f"repeats part of itself {count:,} times (counted repetitions such as "
                f"{{{count}}}, nested ones multiplied); at most {MAX_COUNTED_REPEAT} are "
                "allowed, since compiling grows with the square of the count")
    return None


# --- compile time -----------------------------------------------------------------------
class CompileTimeout(Exception):
    """Compiling did not end within the time allowed (the child process was killed)."""


# Runs in the child: limits its own CPU time to argv[1] seconds (no core file when that
# stops it), reads [[flags, [pattern, ...]], ...] as JSON on stdin, writes one result per
# job: ["ok", base64 of the serialized database] or ["error", message].
_CHILD = """
import base64, json, resource, sys
seconds = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
import hyperscan
jobs = json.load(sys.stdin)
out = []
for flags, patterns in jobs:
    db = hyperscan.Database()
    try:
        db.compile(expressions=[p.encode("utf-8") for p in patterns],
                   ids=list(range(len(patterns))), elements=len(patterns),
                   flags=[flags] * len(patterns))
        out.append(["ok", base64.b64encode(hyperscan.dumpb(db)).decode("ascii")])
    except hyperscan.error as exc:
        out.append(["error", str(exc)])
json.dump(out, sys.stdout)
"""


def compile_in_child(jobs: list[tuple[int, tuple[str, ...]]],
                     cpu_seconds: int) -> list[tuple[bool, bytes | str]]:
    """Compile each (flags, patterns) job in a child process; per job (True, serialized
    database) or (False, the engine's error). Raises CompileTimeout when they take more
    than `cpu_seconds` of CPU time in all (or WALL_SECONDS_FACTOR times that in wall-clock
    time)."""
    cpu_seconds = max(1, math.ceil(cpu_seconds))
    # -P: not the working directory on sys.path (a checkout's operator/ folder would hide
    # the stdlib module of that name); the rest of the environment is kept.
    child = subprocess.Popen([sys.executable, "-P", "-c", _CHILD, str(cpu_seconds)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, "PYTHONHASHSEED": "0"})
    request = json.dumps([[flags, list(patterns)] for flags, patterns in jobs])
    try:
        out, err = child.communicate(request.encode("utf-8", "surrogatepass"),
                                     WALL_SECONDS_FACTOR * cpu_seconds)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise CompileTimeout(f"compiling took more than {WALL_SECONDS_FACTOR * cpu_seconds} "
                             "s (wall-clock)") from None
    if child.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise CompileTimeout(f"compiling took more than {cpu_seconds} s of CPU")
    if child.returncode != 0:
        raise RuntimeError(f"pattern compiler exited {child.returncode}: "
                           f"{err.decode(errors='replace')[-500:]}")
    return [(True, base64.b64decode(value)) if status == "ok" else (False, value)
            for status, value in json.loads(out)]
