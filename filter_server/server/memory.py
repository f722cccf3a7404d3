"""How many bytes of messages one worker may hold at once, and the budget that holds it to
that.

Without a bound, a burst of large messages is an OOM kill: a worker held every message it
had received while the calls waited for their turn, and receiving itself costs about four
times a message's size for a moment (gRPC's buffer, the serialized bytes, the parsed
request, the message read from it). Measured on one worker (benchmarks/memory_burst.py):
32 concurrent 20 MiB messages peaked at 1,009 MiB with the client's 5 s deadline and at
1,799 MiB with 60 s — far past the rendered 512 MiB limit.

The budget is derived from the memory limit of the container (the operator passes it as
MAILWARDEN_MEMORY_LIMIT_BYTES from the pod's `resources.limits.memory`; else the cgroup's
limit): the worker's share of it, less what the worker itself uses once its policy is
loaded, less room for parsing one message (bounded: only MAX_PARSE_BYTES are parsed), less
a safety margin. Every call reserves from it before its message is received (see
`FilterServicer`), so the limit holds however many calls arrive at once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from filter_server.message import MAX_PARSE_BYTES
from mailwarden.wire import MEMORY_LIMIT_ENV as LIMIT_ENV

# Without any known limit (a laptop, local mode), each worker holds at most this much.
UNLIMITED_BUDGET_BYTES = 1024 * 1024 * 1024
# Parsing one message holds about eight times what is parsed
# (tests/filter_server/test_message_limits.py).
PARSE_RESERVE_BYTES = 10 * MAX_PARSE_BYTES
# Of what is left, this share is the budget: the allocator's fragmentation, gRPC's own
# buffers and Python's objects need the rest.
BUDGET_SHARE = 0.7
# cgroup files that hold the container's memory limit (v2, then v1); "max" or an absurdly
# large v1 number means no limit.
CGROUP_LIMIT_FILES = (Path("/sys/fs/cgroup/memory.max"),
                      Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
NO_LIMIT_ABOVE = 1 << 60


def container_memory_limit(environ: dict[str, str] | None = None) -> int | None:
    """The container's memory limit in bytes: $MAILWARDEN_MEMORY_LIMIT_BYTES, else the
    cgroup's, else None. Raises ValueError for an environment value that is not a positive
    integer (a configuration error the user must see)."""
    value = (os.environ if environ is None else environ).get(LIMIT_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) <= 0:
            raise ValueError(f"${LIMIT_ENV} must be a positive number of bytes, not {value!r}")
        return int(value)
    for path in CGROUP_LIMIT_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < NO_LIMIT_ABOVE:
            return int(text)
        return None
    return None


def resident_bytes() -> int:
    """This process's resident set size (what the container's limit counts)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def budget_for(limit_share: int | None, resident: int) -> int:
    """The message budget of a worker whose share of the container's limit is
    `limit_share` (None: no limit) and which uses `resident` bytes now."""
    if limit_share is None:
        return UNLIMITED_BUDGET_BYTES
    return max(0, int((limit_share - resident - PARSE_RESERVE_BYTES) * BUDGET_SHARE))


# Reservations larger than this (to receive a message of about 4 MiB or more) may together
# take at most LARGE_SHARE of the budget, so the rest is always there for ordinary mail:
# three calls that announced 25 MiB messages and never sent them held a worker's whole
# budget, and every other call was refused (issue 20).
LARGE_RESERVATION_BYTES = 16 * 1024 * 1024
LARGE_SHARE = 0.75


class MemoryBudget:
    """Bytes reserved by calls in flight, never more than `capacity` — except that one
    reservation larger than the whole budget is let through when nothing else is reserved,
    so a worker whose limit is small for the largest message still serves it, alone.
    Large reservations (over LARGE_RESERVATION_BYTES) together stay within LARGE_SHARE of
    `capacity` (the same exception applies).

    `capacity` is the worker's budget (`base`) less what the worker holds besides messages
    and grows after the budget was sized: its suppression cache, which loads (and can grow
    to hundreds of MB) while the worker serves (`set_outside`)."""

    def __init__(self, capacity: int) -> None:
        self.base = capacity
        self.outside = 0
        self.capacity = capacity
        self.reserved = 0
        self.large = 0  # the part of `reserved` in large reservations
        self._changed = threading.Condition(threading.Lock())

    def set_base(self, nbytes: int) -> None:
        with self._changed:
            self.base = nbytes
            self.capacity = max(0, self.base - self.outside)
            self._changed.notify_all()

    def set_outside(self, nbytes: int) -> None:
        """The worker now holds `nbytes` outside the budget (the suppression cache)."""
        with self._changed:
            self.outside = nbytes
            self.capacity = max(0, self.base - self.outside)
            self._changed.notify_all()

    def _fits(self, nbytes: int) -> bool:
        if self.reserved == 0:
            return True
        if self.reserved + nbytes > self.capacity:
            return False
        return nbytes <= LARGE_RESERVATION_BYTES or \
            self.large + nbytes <= self.capacity * LARGE_SHARE

    def reserve(self, nbytes: int, timeout: float | None) -> bool:
        """Reserve `nbytes`, waiting up to `timeout` seconds (None: no limit) for others to
        release; False when it did not fit in time."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._fits(nbytes), timeout):
                return False
            self.reserved += nbytes
            self.large += _large(nbytes)
            return True

    def shrink(self, held: int, nbytes: int) -> None:
        """Keep only `nbytes` of a reservation of `held` (a message turned out smaller than
        was reserved for receiving it)."""
        with self._changed:
            self.reserved -= held - nbytes
            self.large += _large(nbytes) - _large(held)
            self._changed.notify_all()

    def release(self, nbytes: int) -> None:
        with self._changed:
            self.reserved -= nbytes
            self.large -= _large(nbytes)
            self._changed.notify_all()


def _large(nbytes: int) -> int:
    return nbytes if nbytes > LARGE_RESERVATION_BYTES else 0
