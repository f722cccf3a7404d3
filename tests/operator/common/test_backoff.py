"""Refused child writes (issue 13 item 10): which errors pause, for how long, and when the
pause ends early."""

from __future__ import annotations

from mailwarden_operator.common.apply import ForeignObject
from mailwarden_operator.common.backoff import (
    ApplyBackoff,
    ApplyFailure,
    apply_condition,
    is_persistent,
    retry_delay,
)
from mailwarden_operator.common.kube import KubeError


def test_client_errors_pause_and_transient_ones_are_retried() -> None:
    for status in (400, 403, 404, 409, 422):
        assert is_persistent(KubeError(status, "x"))
    for status in (0, 429, 500, 503, 504):
        assert not is_persistent(KubeError(status, "x"))


def test_the_delay_doubles_up_to_five_minutes() -> None:
    assert [retry_delay(n) for n in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_a_pause_doubles_and_ends_at_a_spec_change() -> None:
    now = [100.0]
    backoff = ApplyBackoff(clock=lambda: now[0])
    failure = ApplyFailure.of(KubeError(422, "Service x is invalid: bad port"))
    assert failure.reason == "Invalid" and "bad port" in failure.message
    assert backoff.paused("ns", "p", 1) is None
    assert backoff.failed("ns", "p", 1, failure) == 5
    assert backoff.paused("ns", "p", 1) == failure
    now[0] += 5
    assert backoff.paused("ns", "p", 1) is None          # time for one more attempt
    assert backoff.failed("ns", "p", 1, failure) == 10   # refused again: twice as long
    now[0] += 6
    assert backoff.paused("ns", "p", 1) == failure
    assert backoff.paused("ns", "p", 2) is None          # a new generation: at once
    assert backoff.failed("ns", "p", 2, failure) == 5


def test_the_condition_carries_the_api_message() -> None:
    foreign = ApplyFailure.of(ForeignObject("Service", "ns", "mail-filter", "no controller"))
    ctype, status, reason, message = apply_condition(foreign)
    assert (ctype, status, reason) == ("ApplyFailed", "True", "ForeignObject")
    assert "Service ns/mail-filter already exists and is not managed" in message
    assert apply_condition(None)[1:3] == ("False", "Applied")
