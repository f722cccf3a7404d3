"""The suppression rule every consumer applies — the store when it answers Check, the filter
pod's cache when it answers Classify — and the two enumerations it speaks in.

Part of the public contract: `Reason` and `MailClass` number and name things the way
mailwarden.unsubscribe.v1 and mailwarden.filter.v1 do.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from mailwarden.addresses import GLOBAL_SCOPE


class Reason(str, enum.Enum):
    UNSUBSCRIBE = "unsubscribe"
    COMPLAINT = "complaint"
    BOUNCE = "bounce"
    MANUAL = "manual"

    @classmethod
    def parse(cls, value: str) -> Reason:
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown reason {value!r} (use one of: {choices})") from None


class MailClass(enum.IntEnum):
    """Same numbering as mailwarden.filter.v1.MailClass and mailwarden.unsubscribe.v1."""
    UNSPECIFIED = 0
    BULK = 1
    TRANSACTIONAL = 2

    @classmethod
    def coerce(cls, value: MailClass | int | str) -> MailClass:
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown mail class {value!r} (bulk or transactional)") \
                    from None
        return cls(int(value))


def applies(entries: Mapping[str, Reason], scope: str, mail_class: MailClass | int | str) -> bool:
    """Whether a recipient with these suppressions (scope → reason) must not get mail of
    ``mail_class`` sent for list ``scope`` ("" = no list).

    The rule: a global suppression stops all mail. A suppression in the mail's own scope
    stops bulk mail; transactional mail may bypass it unless it was a complaint.
    """
    if not entries:
        return False
    if GLOBAL_SCOPE in entries:
        return True
    if not scope or scope == GLOBAL_SCOPE:
        return False
    reason = entries.get(scope)
    if reason is None:
        return False
    if MailClass.coerce(mail_class) == MailClass.TRANSACTIONAL:
        return reason == Reason.COMPLAINT
    return True
