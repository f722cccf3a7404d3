"""What to do when the API server refuses a child write.

A 4xx other than throttling is not going to succeed by retrying the same request: an
admission policy, a quota, RBAC, an invalid object, a foreign object with the child's name.
The reconcile records it in the `ApplyFailed` condition with the API's message (once: the
status is only written when it changes) and does not retry the writes for a while; the
pause doubles with each failure (5 s, 10 s, … up to 5 minutes) and ends at once when the
resource's spec changes (a new generation). Nothing else is retried in a tight loop: no
Event per attempt, no kopf bookkeeping patch per attempt.

Transient failures (no answer, 429, 5xx) are raised for kopf to retry, with the same
doubling delay (`retry_delay`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from mailwarden_operator.common.apply import ForeignObject
from mailwarden_operator.common.kube import KubeError

BASE_SECONDS = 5.0
MAX_SECONDS = 300.0
# Client errors a retry of the same request cannot fix. 409 includes ForeignObject (an
# object with the child's name that is not ours); 429 (throttled) is transient.
PERSISTENT_STATUSES = frozenset({400, 403, 404, 405, 409, 410, 413, 415, 422})
REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
           409: "Conflict", 410: "Gone", 413: "TooLarge", 415: "UnsupportedMediaType",
           422: "Invalid"}
MAX_MESSAGE = 1000

Condition = tuple[str, str, str, str]


def is_persistent(exc: KubeError) -> bool:
    return exc.status in PERSISTENT_STATUSES


def retry_delay(retry: int) -> float:
    """The delay before retry number `retry` (0 first): 5 s doubling up to 5 minutes."""
    return min(MAX_SECONDS, BASE_SECONDS * 2 ** max(0, min(retry, 16)))


@dataclass(frozen=True)
class ApplyFailure:
    reason: str
    message: str

    @classmethod
    def of(cls, exc: KubeError) -> "ApplyFailure":
        reason = "ForeignObject" if isinstance(exc, ForeignObject) \
            else REASONS.get(exc.status, f"Status{exc.status}")
        return cls(reason, str(exc)[:MAX_MESSAGE])


def apply_condition(failure: ApplyFailure | None) -> Condition:
    if failure is None:
        return ("ApplyFailed", "False", "Applied",
                "the API server accepted every child object")
    return ("ApplyFailed", "True", failure.reason,
            f"the API server refused a child object (retried with back-off, at once after "
            f"a spec change): {failure.message}")


def quiet_transitions(previous: dict, transitions: list,
                      types: tuple[str, ...] = ("ApplyFailed",)) -> list:
    """The transitions worth an Event for the conditions `types` whose good state is
    routine: warnings, and recoveries from a bad state (`ApplyFailed` back to False, an
    autoscaler condition back to True); not their first, routine appearance."""
    before = {c.get("type"): c.get("status") for c in previous.get("conditions") or []}
    bad = {"ApplyFailed": "True"}
    out = []
    for t in transitions:
        ctype = next((x for x in types if t.reason.startswith(x)), None)
        if ctype is None or t.type == "Warning" or before.get(ctype) == bad.get(ctype, "False"):
            out.append(t)
    return out


@dataclass
class _State:
    generation: int | None
    failures: int
    until: float
    failure: ApplyFailure


class ApplyBackoff:
    """Per resource: the last refusal and until when writes pause."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._states: dict[tuple[str, str], _State] = {}
        self._guard = threading.Lock()

    def paused(self, namespace: str, name: str, generation: int | None) -> ApplyFailure | None:
        """The refusal to keep reporting while writes pause, or None to apply now."""
        with self._guard:
            state = self._states.get((namespace, name))
            if state is None:
                return None
            if state.generation != generation:  # the spec changed: try it at once
                del self._states[(namespace, name)]
                return None
            return state.failure if self.clock() < state.until else None

    def last_failure(self, namespace: str, name: str) -> ApplyFailure | None:
        with self._guard:
            state = self._states.get((namespace, name))
            return state.failure if state else None

    def failed(self, namespace: str, name: str, generation: int | None,
               failure: ApplyFailure) -> float:
        """Record a refusal; returns the pause in seconds."""
        with self._guard:
            before = self._states.get((namespace, name))
            failures = before.failures + 1 if before and before.generation == generation else 1
            pause = retry_delay(failures - 1)
            self._states[(namespace, name)] = _State(generation, failures,
                                                     self.clock() + pause, failure)
            return pause

    def succeeded(self, namespace: str, name: str) -> None:
        self.forget(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._states.pop((namespace, name), None)
