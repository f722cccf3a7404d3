"""Whose turn it is to classify: one at a time, earliest deadline first."""

from __future__ import annotations

import threading
import time

from filter_server.server.cost import CostModel
from filter_server.server.turns import TurnQueue

MIB = 1 << 20


def _order_served(queue: TurnQueue, arrivals: list[tuple[str, float | None, int]]) -> list[str]:
    """Queue every arrival while a first call holds the turn, then let them run."""
    first, _ = queue.join(10.0, 1000)
    assert queue.wait(first, 0)
    served: list[str] = []
    lock = threading.Lock()
    threads = []
    for name, remaining, size in arrivals:
        turn, _ = queue.join(remaining, size)

        def run(turn=turn, name=name) -> None:
            assert queue.wait(turn, 10)
            with lock:
                served.append(name)
            queue.done(turn)
        threads.append(threading.Thread(target=run))
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    queue.done(first)
    for thread in threads:
        thread.join(10)
    return served


def test_the_earliest_deadline_goes_first_and_ties_go_in_arrival_order() -> None:
    served = _order_served(TurnQueue(CostModel()), [
        ("large-10s", 10.0, 4 * MIB), ("mail-5s-a", 5.0, 5000), ("stream", None, 5000),
        ("mail-5s-b", 5.0, 5000), ("large-9s", 9.0, 4 * MIB)])
    assert served == ["mail-5s-a", "mail-5s-b", "large-9s", "large-10s", "stream"]


def test_the_expected_wait_counts_only_the_calls_that_go_first() -> None:
    model = CostModel()
    queue = TurnQueue(model)
    running, _ = queue.join(10.0, 4 * MIB)
    queue.wait(running, 0)
    queue.join(9.0, 4 * MIB)      # waiting, before any call with a later deadline
    _, late = queue.join(20.0, 5000)
    _, early = queue.join(2.0, 5000)
    # The early call waits for the running one only; the late one for both large ones.
    assert early == model.seconds(2, 4 * MIB + 5000)
    assert late == model.seconds(3, 2 * 4 * MIB + 5000)


def test_a_call_that_gives_up_leaves_the_turn_to_the_next() -> None:
    queue = TurnQueue(CostModel())
    running, _ = queue.join(10.0, 1000)
    queue.wait(running, 0)
    impatient, _ = queue.join(1.0, 1000)
    patient, _ = queue.join(5.0, 1000)
    assert not queue.wait(impatient, 0.05)   # gave up
    queue.done(running)
    assert queue.wait(patient, 1)            # skipped the one that left


def test_a_refused_call_that_held_the_turn_hands_it_on() -> None:
    queue = TurnQueue(CostModel())
    refused, _ = queue.join(5.0, 1000)       # granted at once: nothing else queued
    nxt, _ = queue.join(5.0, 1000)
    queue.leave(refused)
    assert queue.wait(nxt, 1)


class _Recording(CostModel):
    def __init__(self) -> None:
        super().__init__()
        self.observed: list[float] = []

    def observe(self, parsed_bytes: int, seconds: float) -> None:
        self.observed.append(seconds)
        super().observe(parsed_bytes, seconds)


def test_a_turn_is_priced_from_when_it_was_granted_not_when_its_thread_woke() -> None:
    """The worker is busy from the grant on: a thread slow to wake (the interpreter lock
    under overload) costs the calls queued behind it as much as the classification."""
    model = _Recording()
    queue = TurnQueue(model)
    turn, _ = queue.join(5.0, 1000)          # granted at once: nothing else queued
    time.sleep(0.05)                         # the thread takes its turn late
    assert queue.wait(turn, 1)
    queue.done(turn)
    assert model.observed[-1] >= 0.05
