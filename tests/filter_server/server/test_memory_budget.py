"""The worker's budget for messages in flight: where the limit comes from, how the budget
is derived from it, and the reservation rules every call follows."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from filter_server.server import memory
from filter_server.server.memory import LIMIT_ENV, MemoryBudget, budget_for, \
    container_memory_limit

MIB = 1 << 20


def test_the_operator_given_limit_comes_first(monkeypatch, tmp_path: Path) -> None:
    cgroup = tmp_path / "memory.max"
    cgroup.write_text(f"{1024 * MIB}\n")
    monkeypatch.setattr(memory, "CGROUP_LIMIT_FILES", (cgroup,))
    assert container_memory_limit({LIMIT_ENV: str(512 * MIB)}) == 512 * MIB
    assert container_memory_limit({}) == 1024 * MIB


@pytest.mark.parametrize("content", ["max\n", f"{1 << 62}\n", "garbage"])
def test_an_unlimited_cgroup_is_no_limit(monkeypatch, tmp_path: Path, content: str) -> None:
    cgroup = tmp_path / "memory.max"
    cgroup.write_text(content)
    monkeypatch.setattr(memory, "CGROUP_LIMIT_FILES", (cgroup,))
    assert container_memory_limit({}) is None


def test_cgroup_v1_is_read_when_v2_is_absent(monkeypatch, tmp_path: Path) -> None:
    v1 = tmp_path / "memory.limit_in_bytes"
    v1.write_text(f"{300 * MIB}\n")
    monkeypatch.setattr(memory, "CGROUP_LIMIT_FILES", (tmp_path / "absent", v1))
    assert container_memory_limit({}) == 300 * MIB


@pytest.mark.parametrize("value", ["512Mi", "-1", "0", "lots"])
def test_a_bad_limit_in_the_environment_is_an_error(value: str) -> None:
    with pytest.raises(ValueError, match=LIMIT_ENV):
        container_memory_limit({LIMIT_ENV: value})


def test_budget_is_what_the_worker_does_not_use_less_parsing_room() -> None:
    # 512 MiB pod, 80 MiB used: (512 - 80 - 40) * 0.7
    assert budget_for(512 * MIB, 80 * MIB) == int((512 - 80 - 40) * MIB * 0.7)
    assert budget_for(100 * MIB, 90 * MIB) == 0          # nothing left: one call at a time
    assert budget_for(None, 80 * MIB) == memory.UNLIMITED_BUDGET_BYTES


def test_reservations_never_exceed_the_budget() -> None:
    budget = MemoryBudget(100)
    assert budget.reserve(60, timeout=0)
    assert not budget.reserve(50, timeout=0.05)  # 110 > 100: refused after the wait
    budget.shrink(60, 10)                        # the message turned out small
    assert budget.reserve(50, timeout=0)
    assert budget.reserved == 60
    budget.release(10)
    budget.release(50)
    assert budget.reserved == 0


def test_a_waiting_call_gets_memory_as_soon_as_it_is_given_back() -> None:
    budget = MemoryBudget(100)
    budget.reserve(100, timeout=0)
    got: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        if budget.reserve(70, timeout=10):
            got.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)
    budget.release(100)
    waiter.join(5)
    assert got and got[0] < 2.0


def test_a_message_larger_than_the_budget_goes_through_alone() -> None:
    budget = MemoryBudget(50)
    assert budget.reserve(80, timeout=0)      # nothing else held: served, alone
    assert not budget.reserve(1, timeout=0)   # and nothing beside it
    budget.release(80)
    assert budget.reserve(1, timeout=0)
    assert not budget.reserve(80, timeout=0)  # not while anything else is held
