"""The CPU time one message may take to parse.

Every text-processing step is linear in its input (textscan.py), but the input may
be 4 MiB (message.MAX_PARSE_BYTES) of whatever costs the stdlib parser most per byte:
multiparts nested 128 deep re-check every line against every boundary, and thousands of
empty parts cost microseconds each, so a crafted message can still take seconds. The
parser therefore reads a message in slices and stops when the message's budget is spent;
what was read is decoded (within the same time again) and classified as usual, and the
verdict says so (a SCAN_BUDGET_EXCEEDED hit naming how much was read). No step between two
checks holds the interpreter lock for long (each is linear in at most one slice, one part
or one header), so health checks, admission and signal handlers keep running while a
message is parsed.

The budget is thread CPU time, not wall-clock time: a message's verdict must not depend on
how busy the machine was (a loaded node would otherwise cut ordinary mail short), and the
time the classifying thread waits for the interpreter lock is not its own.
"""

from __future__ import annotations

import time


class ScanBudget:
    """`seconds` of this thread's CPU time from now; None or 0 = unlimited."""

    __slots__ = ("seconds", "_until", "exceeded")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds or None
        self._until = time.thread_time() + seconds if seconds else None
        self.exceeded = False  # it ran out at least once

    def spent(self) -> bool:
        """True when the budget (or its renewal) is used up."""
        if self._until is not None and time.thread_time() > self._until:
            self.exceeded = True
            return True
        return False

    def renew(self) -> None:
        """The same again from now: reading stopped when the budget ran out, and decoding
        what was read gets at most as long (so a message costs at most about twice the
        budget, and what was read is still classified)."""
        if self.seconds:
            self._until = time.thread_time() + self.seconds


UNLIMITED = ScanBudget(None)
