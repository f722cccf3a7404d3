"""Which envelope recipients must not be mailed: the seam through which an unsubscribe store
answers the filter. The servicer asks its provider once per message.

Only one provider exists so far, for filters not connected to any store (a SpamPolicy
without `unsubscribeStoreRef`): it suppresses nothing and says so with
SUPPRESSION_DISABLED, so callers can tell "nobody is suppressed" from "we did not check".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from mailwarden.filter.v1 import filter_pb2


@dataclass(frozen=True)
class SuppressionAnswer:
    suppressed: tuple[str, ...]
    state: int                 # filter_pb2.SuppressionState value
    age_seconds: float = 0.0   # age of the suppression data used
    unparseable: tuple[str, ...] = ()  # recipients that are not addresses (not checked)


class SuppressionProvider(Protocol):
    def check(self, recipients: Sequence[str], mail_class: int,
              list_scope: str) -> SuppressionAnswer: ...


class NoSuppressionStore:
    """The filter is not connected to an unsubscribe store."""

    _ANSWER = SuppressionAnswer((), filter_pb2.SUPPRESSION_DISABLED, 0.0)

    def check(self, recipients: Sequence[str], mail_class: int,
              list_scope: str) -> SuppressionAnswer:
        return self._ANSWER
