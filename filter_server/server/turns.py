"""Whose turn it is to classify. A worker classifies one message at a time (CPU-bound
Python: more at once only fight over the interpreter lock); the admitted calls wait, and
the one whose deadline comes first goes next.

First come, first served let a burst of large messages (a quarter of a second each, with
the longer deadlines their senders give them) hold up ordinary mail queued behind them for
seconds, and the server refused ordinary mail it could have answered in time (the fault
suite's large_burst scenario). Earliest deadline first answers every call in time whenever
that is possible at all; among calls with the same deadline it is first come, first
served. A call without a deadline (an open ClassifyStream) is ordered as if it had
NO_DEADLINE_ORDER_SECONDS, so it cannot be starved.

The queue also prices the work ahead of a newcomer (the calls that would go before it)
with the cost model, for the deadline-aware admission. A turn is priced from the moment it
is granted to the moment it is done, not by its classification alone: the granted thread
still has to wake and take the interpreter lock, and under overload (64 calls receiving
512 KiB messages beside it) that hand-over was 7-9% of the worker's time, which a model fed
only the classification time left out of every estimate.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

from filter_server.server.cost import CostModel

NO_DEADLINE_ORDER_SECONDS = 30.0


class Turn:
    """One admitted message waiting for, or having, its turn."""

    __slots__ = ("deadline", "seq", "parsed", "granted_at", "gone", "_event")

    def __init__(self, deadline: float, seq: int, parsed: int) -> None:
        self.deadline = deadline
        self.seq = seq
        self.parsed = parsed
        self.granted_at: float | None = None  # when its turn came (monotonic clock)
        self.gone = False  # gave up waiting; skipped when its turn comes
        self._event = threading.Event()

    def __lt__(self, other: "Turn") -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class TurnQueue:
    def __init__(self, cost: CostModel) -> None:
        self.cost = cost
        self._lock = threading.Lock()
        self._waiting: list[Turn] = []  # a heap: earliest deadline first
        self._running: Turn | None = None
        self._seq = itertools.count()

    def join(self, remaining: float | None, parsed: int) -> tuple[Turn, float]:
        """Queue a message of `parsed` bytes for a call with `remaining` seconds (None: no
        deadline). Returns its turn and the seconds expected until it is classified: the
        work that goes before it, and its own."""
        now = time.monotonic()
        deadline = now + (NO_DEADLINE_ORDER_SECONDS if remaining is None else remaining)
        with self._lock:
            turn = Turn(deadline, next(self._seq), parsed)
            ahead = [t for t in self._waiting if not t.gone and t < turn]
            if self._running is not None:
                ahead.append(self._running)
            expected = self.cost.seconds(len(ahead) + 1,
                                         sum(t.parsed for t in ahead) + parsed)
            heapq.heappush(self._waiting, turn)
            self._grant_next()
        return turn, expected

    def wait(self, turn: Turn, timeout: float | None) -> bool:
        """Wait for `turn` to come; False when `timeout` passed first (the turn is given
        up then)."""
        if turn._event.wait(timeout):
            return True
        with self._lock:
            if turn.granted_at is not None:  # granted just as the wait timed out: take it
                return True
            turn.gone = True
        return False

    def done(self, turn: Turn) -> None:
        """The turn's classification is over; the next one goes."""
        with self._lock:
            assert turn.granted_at is not None, "done() for a turn that was never granted"
            self.cost.observe(turn.parsed, time.monotonic() - turn.granted_at)
            self._running = None
            self._grant_next()

    def leave(self, turn: Turn) -> None:
        """The call ends without classifying (refused, or gave up): forget its turn."""
        with self._lock:
            turn.gone = True
            if self._running is turn:
                self._running = None
                self._grant_next()

    def _grant_next(self) -> None:
        while self._running is None and self._waiting:
            turn = heapq.heappop(self._waiting)
            if not turn.gone:
                turn.granted_at = time.monotonic()
                self._running = turn
                turn._event.set()
