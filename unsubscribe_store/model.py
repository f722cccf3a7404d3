"""Records exchanged between the store backends, the gRPC service and the one-click endpoint.
The suppression rule itself (``applies``, ``Reason``, ``MailClass``) is part of the public
contract: ``mailwarden.suppression``."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime

from mailwarden.suppression import Reason


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
class Compacted:
    """What one compaction removed."""
    changes: int           # change-log rows
    idempotency_keys: int  # idempotency keys past their retention
    floor: int             # sequences up to this one are no longer in the log


@dataclass(frozen=True)
class ForgetResult:
    suppressions: int  # suppressions now kept by fingerprint (still in force)
    history: int       # change-log rows whose address was replaced by its fingerprint


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


class StoreMisconfigured(Exception):
    """The store can never open as configured (not a database, an invalid DSN): retrying
    cannot help, so the server stops with this message instead of waiting forever."""


class StoreUnavailable(Exception):
    """The database could not be reached or the outcome of a write is unknown; the caller
    must retry (with the same idempotency key) and must not treat the write as done."""


def merge_reason(existing: Reason, new: Reason) -> Reason | None:
    """The reason a replayed suppression should end up with, or None when nothing changes:
    a complaint escalates an existing suppression (it decides whether transactional mail may
    bypass it); any other replay keeps the first reason."""
    if new == Reason.COMPLAINT and existing != Reason.COMPLAINT:
        return Reason.COMPLAINT
    return None


def request_fingerprint(address: str, scope: str, reason: Reason) -> str:
    """What an idempotency key is bound to: the same key with a different request is a
    client bug, reported instead of silently answered with another request's result."""
    return hashlib.sha256(f"{address}\x00{scope}\x00{reason.value}".encode()).hexdigest()
