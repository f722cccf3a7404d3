"""gRPC servicer for mailwarden.unsubscribe.v1.UnsubscribeStore (grpc.aio)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mailwarden.addresses import AddressInvalid, normalize_address, normalize_scope
from mailwarden.fingerprints import FingerprintKey
from mailwarden.suppression import MailClass, Reason, applies
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from unsubscribe_store import metrics
from unsubscribe_store.access import AccessPolicy
from unsubscribe_store.artifact import FingerprintArtifact
from unsubscribe_store.feed import ChangeFeed
from unsubscribe_store.model import (
    Change,
    IdempotencyConflict,
    ImportRow,
    StoreUnavailable,
    Suppression,
)
from unsubscribe_store.rows import RowError, RowParser, format_rows
from unsubscribe_store.store import Store

log = logging.getLogger(__name__)

MAX_CHECK_BATCH = 1000
MAX_TEXT = 200
SNAPSHOT_BATCH = 1000
# Bytes per FingerprintSnapshot message (under gRPC's default 4 MiB receive limit).
FINGERPRINT_CHUNK = 1 << 20
# Heartbeats are taken from memory (see feed), but each is still a message per stream: a
# floor of half a second keeps 300 streams at 600 messages a second.
MIN_HEARTBEAT_SECONDS = 0.5
MAX_HEARTBEAT_SECONDS = 30.0
DEFAULT_MAX_SNAPSHOTS = 32
# A stream whose consumer has not taken a message for this long is ended: a client that
# stopped reading would otherwise hold its page, its buffers and a snapshot slot forever.
DEFAULT_SEND_TIMEOUT = 30.0
_REASON_TO_PB = {Reason.UNSUBSCRIBE: pb.UNSUBSCRIBE, Reason.COMPLAINT: pb.COMPLAINT,
                 Reason.BOUNCE: pb.BOUNCE, Reason.MANUAL: pb.MANUAL}
_REASON_FROM_PB = {v: k for k, v in _REASON_TO_PB.items()} | {pb.REASON_UNSPECIFIED:
                                                                Reason.UNSUBSCRIBE}
_FORMATS = {pb.FORMAT_UNSPECIFIED: "csv", pb.CSV: "csv", pb.JSONL: "jsonl"}


def reason_to_pb(reason: Reason) -> int:
    return _REASON_TO_PB[reason]


def reason_from_pb(value: int) -> Reason:
    try:
        return _REASON_FROM_PB[value]
    except KeyError:
        raise ValueError(f"unknown reason {value}") from None


def _ts(value) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def suppression_to_pb(s: Suppression) -> pb.Suppression:
    return pb.Suppression(address=s.address, scope=s.scope, reason=reason_to_pb(s.reason),
                          source=s.source, first_seen=_ts(s.first_seen), sequence=s.sequence)


def change_to_pb(c: Change) -> pb.Change:
    return pb.Change(sequence=c.sequence, op=pb.SUPPRESS if c.op.value == "suppress"
                     else pb.RESUBSCRIBE, address=c.address, scope=c.scope,
                     reason=reason_to_pb(c.reason), source=c.source, at=_ts(c.at))


class WatchEvents:
    """The WatchEvent messages of the feed's changes, built once and shared by every stream.

    With a thousand streams following one replica, building the same message per stream was
    a good part of each change's cost. Streams in step ask for the same changes, so one
    change event per sequence (bounded) and the last batch are kept. An entry is used only
    for the very change it was built from: after a failover the log may reuse a sequence for
    another change."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._single: dict[int, tuple[Change, pb.WatchEvent]] = {}
        self._batch: tuple[Change, Change, pb.WatchEvent] | None = None

    def single(self, change: Change) -> pb.WatchEvent:
        hit = self._single.get(change.sequence)
        if hit is not None and (hit[0] is change or hit[0] == change):
            return hit[1]
        if len(self._single) >= self.keep:
            self._single.clear()
        event = pb.WatchEvent(change=change_to_pb(change))
        self._single[change.sequence] = (change, event)
        return event

    def batch(self, changes: list[Change]) -> pb.WatchEvent:
        """One ChangeBatch of ``changes`` (consecutive, as the feed hands them out)."""
        kept = self._batch
        if kept is not None and kept[0] is changes[0] and kept[1] is changes[-1]:
            return kept[2]  # the same objects of the same window: the same changes between
        event = pb.WatchEvent(change_batch=pb.ChangeBatch(
            changes=[self.single(c).change for c in changes]))
        self._batch = (changes[0], changes[-1], event)
        return event


class _Stalled(Exception):
    """The consumer of a server stream did not read for the send timeout."""


class ServerState:
    """What the servicer, the HTTP endpoint and the health updater share."""

    def __init__(self, store: Store, *, access: AccessPolicy | None = None,
                 max_concurrent_snapshots: int = DEFAULT_MAX_SNAPSHOTS,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT,
                 artifact: FingerprintArtifact | None = None) -> None:
        self.store = store
        # The fingerprint snapshot filter pods start from (None: no fingerprint key).
        self.artifact = artifact
        self.access = access or AccessPolicy()
        self.ready = False
        self.reason = "starting"
        self.sync_standbys = 0
        self.draining = False
        # Snapshots (and exports) in progress at once: each holds a page in memory while its
        # consumer reads; more wait their turn instead of growing the process.
        self.snapshot_slots = asyncio.Semaphore(max_concurrent_snapshots)
        self.send_timeout = send_timeout
        self.feed = ChangeFeed(store)
        metrics.FEED_CONFIRMED_AGE.set_function(self.feed.confirmed_age)
        self.watch_events = WatchEvents()


def _text(value: str, name: str) -> str:
    if len(value) > MAX_TEXT:
        raise ValueError(f"{name} longer than {MAX_TEXT} characters")
    return value


class UnsubscribeService(pb_grpc.UnsubscribeStoreServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @property
    def store(self) -> Store:
        return self.state.store

    async def _writable(self, context: grpc.aio.ServicerContext) -> None:
        # A replicated store that is not Ready must not accept writes it cannot replicate;
        # failing fast lets the client retry elsewhere instead of hanging on COMMIT.
        if self.store.durability == "replicated" and not self.state.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"store not ready: {self.state.reason}")

    async def Unsubscribe(self, request: pb.UnsubscribeRequest,
                          context: grpc.aio.ServicerContext) -> pb.UnsubscribeResponse:
        started = time.perf_counter()
        try:
            address = normalize_address(request.address)
            scope = normalize_scope(request.scope)
            reason = reason_from_pb(request.reason)
            source = _text(request.source, "source")
            key = _text(request.idempotency_key, "idempotency_key")
        except (AddressInvalid, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._writable(context)
        try:
            result = await self.store.unsubscribe(address, scope, reason, source, key)
        except IdempotencyConflict as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except StoreUnavailable as exc:
            metrics.WRITES.labels("unsubscribe", "unavailable").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        metrics.WRITES.labels("unsubscribe", "replay" if result.already_existed else "new").inc()
        metrics.ACK_SECONDS.observe(time.perf_counter() - started)
        return pb.UnsubscribeResponse(sequence=result.sequence,
                                      already_existed=result.already_existed,
                                      address=result.address, scope=result.scope)

    async def Check(self, request: pb.CheckRequest,
                    context: grpc.aio.ServicerContext) -> pb.CheckResponse:
        if len(request.addresses) > MAX_CHECK_BATCH:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"at most {MAX_CHECK_BATCH} addresses per Check")
        try:
            scope = normalize_scope(request.scope, allow_empty=True)
            mail_class = MailClass.coerce(request.mail_class)
            normalised = [normalize_address(a) for a in request.addresses]
        except (AddressInvalid, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            head = await self.store.head()
            found = await self.store.lookup(normalised)
            if self.state.artifact is not None:
                await self._add_forgotten(found, normalised, scope, self.state.artifact.key)
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        response = pb.CheckResponse(head_sequence=head)
        for given, address in zip(request.addresses, normalised):
            entries = found.get(address, [])
            if applies({s.scope: s.reason for s in entries}, scope, mail_class):
                matched = [s for s in entries if s.scope in ("*", scope)]
                response.suppressed.append(pb.CheckResult(
                    address=given, matched=[suppression_to_pb(s) for s in matched]))
        return response

    async def _add_forgotten(self, found: dict[str, list[Suppression]], addresses: list[str],
                             scope: str, key: FingerprintKey) -> None:
        """Add the forgotten suppressions (kept by fingerprint, see Forget) of ``addresses``
        in the scopes a Check looks at — global and ``scope`` — as if kept by address."""
        scopes = ["*"] + ([scope] if scope and scope != "*" else [])
        markers = {key.forgotten(a, sc): (a, sc) for a in set(addresses) for sc in scopes}
        for marker, rows in (await self.store.lookup(list(markers))).items():
            address, wanted = markers[marker]
            found.setdefault(address, []).extend(
                dataclasses.replace(r, address=address) for r in rows if r.scope == wanted)

    async def _send(self, context: grpc.aio.ServicerContext, message) -> None:
        """Write one message of a server stream; raise _Stalled when the consumer has not
        taken a message for ``send_timeout`` seconds (HTTP/2 flow control makes the write
        wait while the client does not read)."""
        try:
            # asyncio.timeout, not wait_for: wait_for wraps every write in a task of its
            # own, which was a tenth of the store's CPU with many streams.
            async with asyncio.timeout(self.state.send_timeout):
                await context.write(message)
        except TimeoutError:
            raise _Stalled() from None

    async def _end_stalled(self, context: grpc.aio.ServicerContext) -> None:
        """End a stream whose consumer stopped reading. Called after its snapshot slot and
        page are released: the status itself is sent only once the client reads what is
        already queued (or its connection ends at the maximum connection age)."""
        metrics.SLOW_CONSUMERS.inc()
        log.info("stream closed: the consumer did not read for %gs", self.state.send_timeout)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the consumer did not read for {self.state.send_timeout:g}s: "
                            "stream closed (reconnect; a Watch resumes from the last "
                            "sequence applied)")

    async def Watch(self, request: pb.WatchRequest,
                    context: grpc.aio.ServicerContext) -> None:
        interval = min(MAX_HEARTBEAT_SECONDS,
                       max(MIN_HEARTBEAT_SECONDS, request.heartbeat_seconds or 1.0))
        metrics.WATCHERS.inc()
        try:
            if request.snapshot:
                count = 0
                cursor = 0
                async with self.state.snapshot_slots, contextlib.aclosing(
                        self.store.snapshot(SNAPSHOT_BATCH)) as pages:
                    async for head, batch in pages:
                        cursor = head
                        if batch:
                            count += len(batch)
                            await self._send(context, pb.WatchEvent(
                                snapshot_chunk=pb.SnapshotChunk(
                                    suppressions=[suppression_to_pb(s) for s in batch])))
                await self._send(context, pb.WatchEvent(
                    snapshot_end=pb.SnapshotEnd(sequence=cursor, count=count)))
            else:
                cursor = request.from_sequence
                head = await self.store.head()
                if cursor > head:
                    # The consumer saw changes this database does not have (restored from an
                    # older backup, or a different store): only a fresh snapshot is correct.
                    await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                        f"from_sequence {cursor} is ahead of the store's head "
                                        f"{head}: take a new snapshot")
                floor = await self.store.log_floor()
                if cursor < floor:
                    # Compacted (Store.compact): the changes after the cursor are gone.
                    await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                        f"the change log no longer holds sequences up to "
                                        f"{floor} (compacted); from_sequence {cursor} cannot "
                                        "be resumed: take a new snapshot")
            await self._follow(context, cursor, interval, request.batch_changes)
        except _Stalled:
            await self._end_stalled(context)
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            metrics.WATCHERS.dec()

    async def _follow(self, context: grpc.aio.ServicerContext, cursor: int,
                      interval: float, batch: bool = False) -> None:
        """Send every change after ``cursor``, and a heartbeat every ``interval`` seconds,
        until the stream ends. Changes come from the shared feed (the database only for a
        cursor older than its window); heartbeats cost no database work."""
        feed = self.state.feed
        feed.followers += 1
        try:
            await self._follow_feed(context, feed, cursor, interval, batch)
        finally:
            feed.followers -= 1

    async def _follow_feed(self, context: grpc.aio.ServicerContext, feed: ChangeFeed,
                           cursor: int, interval: float, batch: bool) -> None:
        """``batch``: the consumer takes ChangeBatch, so every change pending for this
        stream goes in one write. A stream that falls behind (the store busy, or a burst of
        changes) catches up in fewer, larger writes, instead of one write per change per
        stream, which is what bounded fan-out to many streams."""
        events = self.state.watch_events
        generation = feed.generation
        last_heartbeat = 0.0
        while True:
            wake = feed.arm()
            if feed.generation != generation and cursor > feed.head:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                    f"the store's change log went back to {feed.head} "
                                    f"(restore or failover) behind this stream's {cursor}: "
                                    "take a new snapshot")
            generation = feed.generation
            changes = feed.after(cursor, 1000)
            if changes is None:  # older than the window: page through the log itself
                changes = await self.store.changes_after(cursor, 1000)
            expected = cursor
            for change in changes:
                expected += 1
                if change.sequence != expected:
                    # Sequences are gapless by construction; a gap means the log was edited
                    # behind our back. Stop rather than let a consumer skip.
                    log.error("change log gap after %d (next %d)", expected - 1,
                              change.sequence)
                    if batch and expected - 1 > cursor:  # send what came before the gap
                        await self._send(context, events.batch(
                            changes[:expected - 1 - cursor]))
                    elif not batch:
                        for before in changes[:expected - 1 - cursor]:
                            await self._send(context, events.single(before))
                    await context.abort(grpc.StatusCode.DATA_LOSS,
                                        f"change log has a gap after sequence {expected - 1}")
            if changes and batch:
                await self._send(context, events.batch(changes))
                cursor = changes[-1].sequence
            else:
                for change in changes:
                    await self._send(context, events.single(change))
                    cursor = change.sequence
            if changes and cursor < feed.head:
                continue
            now = time.monotonic()
            due = interval - (now - last_heartbeat)
            if due <= 0:
                # A heartbeat tells the consumer it has everything committed: only for a head
                # the feed read from the database lately. While it cannot (the database is
                # down, hung or failing over) none is sent and consumers go stale; the
                # feed's next confirmed read wakes this loop.
                if feed.confirmed():
                    server_time = Timestamp()
                    server_time.GetCurrentTime()
                    await self._send(context, pb.WatchEvent(heartbeat=pb.Heartbeat(
                        head_sequence=max(feed.head, cursor), server_time=server_time)))
                    last_heartbeat = now
                else:
                    feed.report_unconfirmed()
                due = interval
            await feed.wait(wake, due)

    async def FingerprintSnapshot(self, request: pb.FingerprintSnapshotRequest,
                                  context: grpc.aio.ServicerContext) -> None:
        artifact = self.state.artifact
        if artifact is None:
            metrics.FINGERPRINT_SNAPSHOTS.labels("no_key").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this store has no fingerprint key (--fingerprint-key-file): "
                                "take a Watch snapshot")
        assert artifact is not None
        if request.key_id and not hmac.compare_digest(request.key_id, artifact.key.key_id):
            metrics.FINGERPRINT_SNAPSHOTS.labels("other_key").inc()
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"this store's fingerprint key is another (id "
                                f"{artifact.key.key_id.hex()}, yours {request.key_id.hex()}): "
                                "take a Watch snapshot, or give both the same key Secret")
        try:
            # Waiting for a build (minutes at 100M) holds no snapshot slot: Watch snapshots
            # and exports go on meanwhile.
            path = await artifact.current()
            async with self.state.snapshot_slots:
                # The file is replaced by rename, never rewritten: the one opened here stays
                # whole while it is sent, whatever refresh happens meanwhile.
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    first = True
                    while data := f.read(FINGERPRINT_CHUNK):
                        await self._send(context, pb.FingerprintSnapshotChunk(
                            data=data, size=size if first else 0))
                        first = False
            metrics.FINGERPRINT_SNAPSHOTS.labels("sent").inc()
        except _Stalled:
            await self._end_stalled(context)
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    async def Resubscribe(self, request: pb.ResubscribeRequest,
                          context: grpc.aio.ServicerContext) -> pb.ResubscribeResponse:
        await self.state.access.authorise("Resubscribe", context)
        try:
            address = normalize_address(request.address)
            scope = normalize_scope(request.scope)
            source = _text(request.source, "source")
        except (AddressInvalid, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not source.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "source is required: say who or what authorised the resubscribe")
        await self._writable(context)
        try:
            result = await self.store.resubscribe(address, scope, source)
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        log.info("resubscribe of one address in scope %s (removed=%s, source=%s)", scope,
                 result.removed, source)
        metrics.WRITES.labels("resubscribe", "new" if result.removed else "replay").inc()
        return pb.ResubscribeResponse(sequence=result.sequence, removed=result.removed)

    async def Forget(self, request: pb.ForgetRequest,
                     context: grpc.aio.ServicerContext) -> pb.ForgetResponse:
        await self.state.access.authorise("Forget", context)
        artifact = self.state.artifact
        if artifact is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "Forget keeps the address's fingerprint, which needs the "
                                "store's fingerprint key (--fingerprint-key-file)")
        assert artifact is not None
        try:
            address = normalize_address(request.address)
        except AddressInvalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._writable(context)
        key = artifact.key
        try:
            result = await self.store.forget(address, lambda scope: key.forgotten(address, scope))
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        # Never the address in the log: that is what was just erased.
        log.info("forget: %d suppressions now kept by fingerprint, %d change-log rows "
                 "rewritten", result.suppressions, result.history)
        metrics.WRITES.labels("forget", "new" if result.suppressions else "replay").inc()
        return pb.ForgetResponse(suppressions=result.suppressions, history=result.history)

    async def Import(self, request_iterator: AsyncIterator[pb.ImportChunk],
                     context: grpc.aio.ServicerContext) -> pb.ImportSummary:
        await self.state.access.authorise("Import", context)
        await self._writable(context)
        summary = pb.ImportSummary()
        parser: RowParser | None = None
        skip_invalid = False
        batch: list[ImportRow] = []
        # One batch is written while the next is parsed (in a thread, so the event loop keeps
        # serving other calls): the import takes max(parse, write) per batch, not the sum.
        # Batches are written one at a time, in file order.
        writing: list[asyncio.Task] = []

        async def write(rows: list[ImportRow]) -> None:
            inserted, existed = await self.store.import_rows(rows)
            summary.inserted += inserted
            summary.already_existed += existed

        async def written() -> None:
            while writing:
                await writing.pop()

        async def flush(*, wait: bool = True) -> None:
            await written()
            if batch:
                writing.append(asyncio.create_task(write(list(batch))))
                batch.clear()
            if wait:
                await written()

        async def take(items) -> None:
            for item in items:
                if isinstance(item, RowError):
                    summary.invalid_rows += 1
                    if len(summary.errors) < 100:
                        summary.errors.append(pb.ImportError(line=item.line,
                                                             message=item.message))
                    if not skip_invalid:
                        await flush()
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"line {item.line}: {item.message} "
                            f"({summary.inserted + summary.already_existed} rows before it "
                            "were imported; re-running is safe: rows are upserts)")
                    continue
                summary.rows += 1
                batch.append(item)
                if len(batch) >= self.store.import_batch:
                    await flush(wait=False)

        try:
            async for chunk in request_iterator:
                if parser is None:
                    try:
                        parser = RowParser(_FORMATS.get(chunk.format, "csv"),
                                           default_scope=chunk.default_scope or "*",
                                           default_reason=reason_from_pb(chunk.default_reason),
                                           default_source=_text(chunk.default_source,
                                                                "default_source"))
                    except (AddressInvalid, ValueError) as exc:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    skip_invalid = chunk.skip_invalid
                await take(await asyncio.to_thread(parser.feed, chunk.data))
            if parser is not None:
                await take(parser.finish())
            await flush()
            summary.last_sequence = await self.store.head()
        except StoreUnavailable as exc:
            for task in writing:
                task.cancel()
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{exc} ({summary.inserted + summary.already_existed} rows were "
                                "imported before; re-running is safe)")
        return summary

    async def Export(self, request: pb.ExportRequest,
                     context: grpc.aio.ServicerContext) -> None:
        await self.state.access.authorise("Export", context)
        fmt = _FORMATS.get(request.format, "csv")
        try:
            scope = normalize_scope(request.scope, allow_empty=True)
        except AddressInvalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        header = True
        try:
            async with self.state.snapshot_slots, contextlib.aclosing(
                    self.store.export(scope)) as pages:
                async for batch in pages:
                    await self._send(context, pb.ExportChunk(
                        data=format_rows(fmt, batch, header=header)))
                    header = False
            if header and fmt == "csv":
                await self._send(context, pb.ExportChunk(data=format_rows(fmt, [], header=True)))
        except _Stalled:
            await self._end_stalled(context)
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    async def GetStatus(self, request: pb.GetStatusRequest,
                        context: grpc.aio.ServicerContext) -> pb.StoreStatus:
        status = pb.StoreStatus(ready=self.state.ready, reason=self.state.reason,
                                backend=self.store.backend,
                                # A store that is not Ready is not available at all,
                                # let alone highly.
                                highly_available=self.store.highly_available
                                and self.state.ready,
                                durability=self.store.durability,
                                sync_standbys=self.state.sync_standbys)
        try:
            status.head_sequence = await self.store.head()
            status.suppressions = await self.store.count()
        except StoreUnavailable:
            pass  # the reason field already says the store is unavailable
        return status
