"""The storage interface both backends implement (`backends/`, which also picks one).

Every write method returns only after its transaction has committed (and, for a postgres
store with ``durability="replicated"``, after the synchronous standby confirmed it): the
gRPC and HTTP layers acknowledge on return, so an acknowledgement always means "durable".
Addresses and scopes reach the store already normalised (see ``addresses``).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import datetime
from typing import Any

from mailwarden.suppression import Reason
from unsubscribe_store.model import (
    Change,
    Compacted,
    ForgetResult,
    ImportRow,
    Readiness,
    ResubscribeResult,
    StoreUnavailable,
    Suppression,
    UnsubscribeResult,
    request_fingerprint,
)

__all__ = ["DURABILITIES", "ChangeNotifier", "Store", "request_fingerprint"]

DURABILITIES = ("local", "replicated")
# Rows deleted per compaction transaction (each holds the writers' lock that long).
COMPACT_BATCH = 10_000


class ChangeNotifier:
    """Wakes every waiting Watch stream when the change log may have grown. It carries no
    data: watchers always read the log by sequence, so a lost wake-up costs latency (the
    periodic re-read catches it), never a change."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def arm(self) -> asyncio.Event:
        """Take this before reading the log, then ``wait`` on it: a change committed between
        the read and the wait still wakes the waiter."""
        return self._event

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class Store(abc.ABC):
    backend: str = ""
    highly_available: bool = False

    # Rows of an Import written per transaction (a backend with a set-based upsert takes
    # more at a time).
    import_batch = 500

    def __init__(self, durability: str = "local") -> None:
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {DURABILITIES}, not {durability!r}")
        self.durability = durability
        self.notifier = ChangeNotifier()
        self.max_batch = 256
        self._queue: asyncio.Queue = asyncio.Queue()
        self._writer: asyncio.Task | None = None

    # --- group commit --------------------------------------------------------------------
    # Both backends serialise writers (that is what keeps sequences gapless and in commit
    # order), so one commit at a time. Requests that queue up while a commit is in flight go
    # into the next transaction together — each in its own savepoint, so one bad request does
    # not fail the others — and are all answered when that single COMMIT has returned.

    async def _commit_batch(self, bodies: list) -> list[tuple[object, BaseException | None]]:
        """Run ``bodies`` in one committed transaction; return (result, error) per body.
        Raises (StoreUnavailable, ...) when nothing was committed."""
        raise NotImplementedError

    async def _submit(self, body: Callable[..., Any]) -> Any:
        """Queue a write and wait until it is committed."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((body, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches(), name="unsubscribe-writer")
        return await future

    async def _write_batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(body, fut) for body, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            try:
                outcomes = await self._commit_batch([body for body, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreUnavailable("store is shutting down"))
                raise
            except Exception as exc:  # nothing in the batch was committed
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), (result, error) in zip(batch, outcomes):  # only now: committed
                if fut.done():
                    continue
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(result)

    async def _stop_group_commit(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except (asyncio.CancelledError, Exception):
                pass
            self._writer = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(StoreUnavailable("store is shutting down"))

    @abc.abstractmethod
    async def open(self, *, migrate: bool = True) -> None:
        """Connect, apply migrations (unless told not to) and start change notifications.
        Raises StoreUnavailable when the database cannot be reached."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied (empty when up to date)."""

    @abc.abstractmethod
    async def unsubscribe(self, address: str, scope: str, reason: Reason, source: str,
                          idempotency_key: str = "") -> UnsubscribeResult: ...

    @abc.abstractmethod
    async def resubscribe(self, address: str, scope: str, source: str) -> ResubscribeResult: ...

    @abc.abstractmethod
    async def lookup(self, addresses: Sequence[str]) -> dict[str, list[Suppression]]:
        """Every suppression (all scopes) of the given normalised addresses."""

    @abc.abstractmethod
    async def head(self) -> int:
        """The last committed change sequence."""

    @abc.abstractmethod
    async def changes_after(self, sequence: int, limit: int = 1000) -> list[Change]:
        """Committed changes with sequence > ``sequence``, in order, at most ``limit``."""

    @abc.abstractmethod
    async def page(self, after: tuple[str, str] | None, limit: int,
                   scope: str = "") -> list[Suppression]:
        """At most ``limit`` suppressions (of one scope, or all when ``scope`` is "") in
        (address, scope) order, starting after the key ``after`` (None: from the start).
        One short read each: no transaction or connection outlives a page."""

    async def snapshot(self, batch_size: int = 1000
                       ) -> AsyncGenerator[tuple[int, list[Suppression]], None]:
        """The suppression set for a Watch: yields (head, batch) pairs — the same head each
        time, at least one pair — read page by page after reading head, so memory is one
        page and a consumer that stops reading holds no database resources.

        The pages are read after ``head``, so a key may already show a change committed
        after it; every such change is also in the change log after ``head``, and each
        change sets its key's whole state, so replaying the changes after ``head`` (which
        Watch sends next) ends exactly at the store's state. Nothing a consumer sees is a
        state that did not exist, and nothing committed is missed."""
        head = await self.head()
        after: tuple[str, str] | None = None
        sent = False
        while True:
            batch = await self.page(after, batch_size)
            if batch:
                sent = True
                yield head, batch
                after = (batch[-1].address, batch[-1].scope)
            if len(batch) < batch_size:
                break
        if not sent:
            yield head, []

    async def export(self, scope: str = "", batch_size: int = 1000
                     ) -> AsyncGenerator[list[Suppression], None]:
        """All suppressions (of one scope, or all when ``scope`` is ""), in batches, in
        (address, scope) order; page by page, so rows changed while an export runs may or
        may not be in it."""
        after: tuple[str, str] | None = None
        while True:
            batch = await self.page(after, batch_size, scope)
            if batch:
                yield batch
                after = (batch[-1].address, batch[-1].scope)
            if len(batch) < batch_size:
                return

    @abc.abstractmethod
    async def import_rows(self, rows: Sequence[ImportRow]) -> tuple[int, int]:
        """Upsert rows in one transaction; return (inserted_or_escalated, already_existed)."""

    async def compact(self, *, keep_changes: int, changes_before: datetime,
                      keys_before: datetime, batch: int = COMPACT_BATCH) -> Compacted:
        """Delete change-log rows more than ``keep_changes`` behind the head *and* written
        before ``changes_before``, and idempotency keys created before ``keys_before``; in
        batches of ``batch`` rows, each its own short transaction, so writers wait for one
        batch at most. A Watch that resumes from a sequence no longer in the log is told to
        take a snapshot (``log_floor``)."""
        changes = keys = 0
        while True:
            removed = await self._delete_changes(keep_changes, changes_before, batch)
            changes += removed
            if removed < batch:
                break
        while True:
            removed = await self._delete_keys(keys_before, batch)
            keys += removed
            if removed < batch:
                break
        return Compacted(changes, keys, await self.log_floor())

    @abc.abstractmethod
    async def _delete_changes(self, keep_changes: int, before: datetime, limit: int) -> int:
        """Delete at most ``limit`` of the oldest change-log rows that are more than
        ``keep_changes`` behind the head and older than ``before``; how many were deleted."""

    @abc.abstractmethod
    async def _delete_keys(self, before: datetime, limit: int) -> int:
        """Delete at most ``limit`` idempotency keys created before ``before``."""

    @abc.abstractmethod
    async def forget(self, address: str, marker: Callable[[str], str]) -> ForgetResult:
        """Replace a normalised address by ``marker(scope)`` (its fingerprint in that scope)
        in every suppression and change-log row, and drop its idempotency keys, in one
        transaction: the suppressions stay in force, the address is gone. No change is
        logged: a filter pod's fingerprint of the address is the marker's."""

    @abc.abstractmethod
    async def forgotten_under_other_keys(self, prefix: str) -> int:
        """How many suppressions are forgotten under a marker not starting with ``prefix``
        (another fingerprint key's)."""

    @abc.abstractmethod
    async def log_floor(self) -> int:
        """The highest sequence no longer in the change log (0: the log is whole): a Watch
        from a sequence below it cannot be resumed."""

    @abc.abstractmethod
    async def readiness(self) -> Readiness: ...

    @abc.abstractmethod
    async def count(self) -> int: ...
