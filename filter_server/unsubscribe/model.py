"""Records exchanged between the store backends, the gRPC service and the cache, and the
one suppression rule every consumer applies (``applies``)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from .addresses import GLOBAL_SCOPE


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


class Op(str, enum.Enum):
    SUPPRESS = "suppress"
    RESUBSCRIBE = "resubscribe"


@dataclass(frozen=True)
class Suppression:
    address: str
    scope: str
    reason: Reason
    source: str
    first_seen: datetime
    sequence: int


@dataclass(frozen=True)
class Change:
    sequence: int
    op: Op
    address: str
    scope: str
    reason: Reason
    source: str
    at: datetime


@dataclass(frozen=True)
class UnsubscribeResult:
    sequence: int
    already_existed: bool
    address: str
    scope: str


@dataclass(frozen=True)
class ResubscribeResult:
    sequence: int
    removed: bool


@dataclass(frozen=True)
class ImportRow:
    """One validated row of an import (address and scope already normalised)."""
    line: int
    address: str
    scope: str
    reason: Reason
    source: str
    first_seen: datetime | None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""
    sync_standbys: int = 0
    replication_lag_seconds: float = 0.0  # largest standby replay lag (0: none or caught up)


class IdempotencyConflict(Exception):
    """An idempotency key was reused for a different request."""


class StoreUnavailable(Exception):
    """The database could not be reached or the outcome of a write is unknown; the caller
    must retry (with the same idempotency key) and must not treat the write as done."""


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


def merge_reason(existing: Reason, new: Reason) -> Reason | None:
    """The reason a replayed suppression should end up with, or None when nothing changes:
    a complaint escalates an existing suppression (it decides whether transactional mail may
    bypass it); any other replay keeps the first reason."""
    if new == Reason.COMPLAINT and existing != Reason.COMPLAINT:
        return Reason.COMPLAINT
    return None
