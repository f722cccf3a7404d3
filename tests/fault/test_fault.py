"""The fault-injection and load suite, short versions (CI). Every scenario runs real
processes on loopback — `mailwarden serve` replicas started from the rendered Deployment,
the balancing client in a load-generator process, PostgreSQL primary and standbys,
`mailwarden unsubscribe-server` — and asserts its zero-failure / zero-loss property; the
figures are printed (`pytest -s`) and collected into docs/fault/report.md by
`scripts/fault-report.sh`, which runs the long versions.

MAILWARDEN_FAULT_PROFILE=long runs the long versions here too (about 20 minutes).
See docs/fault.md for what each scenario does and asserts."""

from __future__ import annotations

import pytest

from tests.fault import filter_scenarios, unsub_scenarios

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_policy_rollout_under_load_fails_no_call(fault_env) -> None:
    filter_scenarios.rollout(fault_env).assert_ok()


def test_sigterm_of_a_replica_under_load_fails_no_call(fault_env) -> None:
    filter_scenarios.sigterm(fault_env).assert_ok()


def test_sigkill_of_a_replica_under_load_fails_no_call(fault_env) -> None:
    filter_scenarios.sigkill(fault_env).assert_ok()


def test_surge_sheds_load_with_resource_exhausted_never_a_hang(fault_env) -> None:
    filter_scenarios.surge(fault_env).assert_ok()


def test_primary_failover_loses_no_acknowledged_unsubscribe(fault_env) -> None:
    unsub_scenarios.pg_failover(fault_env).assert_ok()


def test_unsubscribe_server_kill_leaves_exactly_one_row_per_request(fault_env) -> None:
    unsub_scenarios.store_kill(fault_env).assert_ok()


def test_bad_input_barrage_leaves_the_servers_up(fault_env) -> None:
    filter_scenarios.barrage(fault_env).assert_ok()


def test_burst_of_large_messages_stays_within_the_memory_limit(fault_env) -> None:
    filter_scenarios.large_burst(fault_env).assert_ok()
