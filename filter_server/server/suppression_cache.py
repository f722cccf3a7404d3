"""SuppressionCache: the suppression set a filter pod keeps, fed by the store's ``Watch``
stream — as keyed fingerprints, never plaintext addresses (mailwarden/fingerprint_index.py).

    cache = SuppressionCache("unsubscribe-store:50061").start()
    cache.wait_ready(10)
    cache.suppressed(["ann@example.com", "bob@example.org"], "newsletter", MailClass.BULK)

The first connection asks for a snapshot (the full set as of sequence S, then every change
after S); every reconnection resumes from the last sequence applied, so nothing is missed and
nothing is loaded twice. Sequences are gapless: a gap (or a store whose head is behind us)
makes the cache drop its state and take a fresh snapshot rather than guess. A background
thread does all of this, so the cache works the same under a threaded or an asyncio server;
``suppressed()`` is an HMAC and a binary search or two per recipient.

What the cache holds: a sorted array of 8-byte fingerprints (``SortedFingerprints``) as of
one sequence of the change log, plus an overlay (fingerprint → complaint, or None when
removed) of the changes applied since. A worker under the supervisor starts from the index
file the supervisor built for the whole pod (``index_path``, mapped read-only, so every
worker shares one copy) and resumes the Watch from that file's sequence; a lone worker, or
one whose resume the store refuses, takes its own snapshot into a private array.

Freshness: the store sends a heartbeat with its head sequence about every second. ``lag`` is
head minus applied; ``age_seconds`` is the time since the cache last knew it had applied
everything the store had committed. A cache that hears nothing for ``silence_timeout`` drops
the stream and reconnects.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from mailwarden.addresses import GLOBAL_SCOPE, AddressInvalid, normalize_address, normalize_scope
from mailwarden.fingerprint_index import (
    FingerprintBuffer,
    IndexUnusable,
    SortedFingerprints,
    entry,
)
from mailwarden.fingerprints import FingerprintKey, ForeignFingerprint
from mailwarden.suppression import MailClass
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# How often a worker looks for the supervisor's index file while it is being built.
INDEX_POLL_SECONDS = 0.2
# What the cache holds per suppression, for the worker's memory budget: a snapshot being
# received (8 bytes, twice while the buffer grows and once more as it is sorted), and a
# change in the overlay (a dict entry and its int key, measured ~100 bytes).
LOADING_ENTRY_BYTES = 24
OVERLAY_ENTRY_BYTES = 128
_EMPTY = SortedFingerprints(FingerprintBuffer().finish().array)


# (target, channel options) -> a channel to the store.
ChannelFactory = Callable[[str, list[tuple[str, object]]], grpc.Channel]


def _insecure_channel(target: str, options: list[tuple[str, object]]) -> grpc.Channel:
    return grpc.insecure_channel(target, options=options)


@dataclass(frozen=True)
class CacheStats:
    ready: bool              # a snapshot has been loaded
    connected: bool          # a Watch stream is open
    applied_sequence: int
    head_sequence: int       # the store's head as last reported
    lag: int                 # head - applied (changes known to exist but not applied yet)
    age_seconds: float       # since the cache was last known to be up to date (inf: never)
    size: int                # (address, scope) suppressions held
    reconnects: int
    snapshots: int
    loading: int = 0         # suppressions of a snapshot being received (held beside `size`)
    overlay: int = 0         # changes held beside the sorted index (since its sequence)
    shared_index: bool = False  # the index is the pod's shared, mapped file
    # False while the cache holds suppressions it cannot apply (forgotten under another
    # fingerprint key): its answers would miss people who objected
    complete: bool = True

    def fresh(self, stale_after: float) -> bool:
        """Whether answers can be reported SUPPRESSION_FRESH: loaded, complete and
        confirmed up to date within `stale_after` seconds."""
        return self.ready and self.complete and self.age_seconds <= stale_after


@dataclass(frozen=True)
class RecipientCheck:
    suppressed: list[str]    # recipients (as given, in order) that must not be mailed
    unparseable: list[str]   # recipients that are not addresses: nothing could be looked up


class SuppressionCache:
    def __init__(self, target: str, *, stale_after: float = 10.0, heartbeat_seconds: float = 1.0,
                 silence_timeout: float | None = None, max_backoff: float = 5.0,
                 on_change: Callable[[pb.Change], None] | None = None,
                 channel_options: Iterable[tuple[str, object]] = (),
                 channel_factory: ChannelFactory | None = None,
                 name: str = "suppression-cache", key: FingerprintKey | None = None,
                 index_path: str | os.PathLike[str] | None = None,
                 fingerprint_snapshot_file: str | os.PathLike[str] | None = None) -> None:
        self.target = target
        self.stale_after = stale_after
        self.heartbeat_seconds = heartbeat_seconds
        self.silence_timeout = silence_timeout or max(5.0, 4 * heartbeat_seconds)
        self.max_backoff = max_backoff
        self.on_change = on_change
        self.name = name
        self._channel_options = list(channel_options)
        # Called for every connection attempt, so a factory may re-read rotated TLS files;
        # an exception counts as a failed attempt (logged, retried with back-off).
        self._channel_factory = channel_factory or _insecure_channel
        # Without a key shared with the pod's index, a key of this process: fingerprints
        # are compared only with others made here.
        if index_path is not None and key is None:
            raise ValueError("a shared suppression index needs the key it was made with")
        self.key = key or FingerprintKey.generate()
        self.index_path = None if index_path is None else Path(index_path)
        # A lone worker with the store's key: its first snapshot is the store's fingerprint
        # snapshot, downloaded here and mapped (server/suppression_artifact.py), instead of
        # a Watch snapshot of every suppression; None, or a store that serves none, and it
        # takes a Watch snapshot.
        self._fingerprint_file = (None if fingerprint_snapshot_file is None
                                  else Path(fingerprint_snapshot_file))
        self._index = _EMPTY
        self._overlay: dict[int, bool | None] = {}
        self._shared = False
        self._size = 0
        self._loading = 0  # entries of the snapshot being received (memory accounting)
        self._applied: int | None = None  # None: no snapshot yet (or one must be retaken)
        self._head = 0
        self._fresh_at: float | None = None
        self._last_event = 0.0
        self._connected = False
        self._reconnects = 0
        self._snapshots = 0
        self.foreign = 0  # forgotten suppressions kept under another key (not applied)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._call: Any = None  # the Watch stream in progress (a grpc call object)
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> SuppressionCache:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
            self._watchdog = threading.Thread(target=self._watch_silence,
                                              name=f"{self.name}-watchdog", daemon=True)
            self._watchdog.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        for thread in (self._thread, self._watchdog):
            if thread is not None:
                thread.join(timeout)

    def __enter__(self) -> SuppressionCache:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until a snapshot is loaded; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._applied is not None, timeout)

    def wait_for_sequence(self, sequence: int, timeout: float | None = None) -> bool:
        """Block until every change up to ``sequence`` is applied (read-your-writes after an
        Unsubscribe ack); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._applied is not None and self._applied >= sequence, timeout)

    # --- queries -----------------------------------------------------------------------
    def check(self, recipients: Iterable[str], scope: str = "",
              mail_class: MailClass | int | str = MailClass.BULK) -> RecipientCheck:
        """Which recipients (as given, in order) must not receive mail of ``mail_class``
        sent for list ``scope`` ("" = no list), and which are not addresses at all. Global
        suppressions stop everything; a suppression of the list itself stops bulk mail, and
        transactional mail too when its reason is a complaint. Recipients are looked up by
        ``mailwarden.addresses.normalize_address`` — the function the store keys by — and
        one that it rejects is reported as unparseable, never dropped silently."""
        try:
            scope_key = normalize_scope(scope, allow_empty=True)
        except AddressInvalid:
            scope_key = ""  # an invalid list name still gets the global suppressions
        klass = MailClass.coerce(mail_class)
        # Normalised before the lock is taken: it is the costly part (IDNA, Unicode), and
        # the Watch thread must not wait for it to apply changes.
        keys: list[tuple[str, str]] = []
        unparseable: list[str] = []
        for recipient in recipients:
            try:
                keys.append((recipient, normalize_address(recipient)))
            except AddressInvalid:
                unparseable.append(recipient)
        # The rule (mailwarden.suppression.applies) over fingerprints: a global suppression
        # stops all mail; one of the list itself stops bulk mail, and transactional mail
        # when it was a complaint. Other lists' suppressions are never looked at.
        fingerprint = self.key.fingerprint
        own_list = bool(scope_key) and scope_key != GLOBAL_SCOPE
        transactional = klass == MailClass.TRANSACTIONAL
        prints = [(recipient, fingerprint(key, GLOBAL_SCOPE),
                   fingerprint(key, scope_key) if own_list else None)
                  for recipient, key in keys]
        suppressed: list[str] = []
        with self._cond:
            # Without an overlay (the common case between index rebuilds) straight to the
            # index's look-up: one Python call less per fingerprint.
            lookup = self._lookup if self._overlay else self._index.lookup
            for recipient, global_fp, list_fp in prints:
                if lookup(global_fp) is not None:
                    suppressed.append(recipient)
                elif list_fp is not None:
                    complaint = lookup(list_fp)
                    if complaint is not None and (complaint or not transactional):
                        suppressed.append(recipient)
        return RecipientCheck(suppressed, unparseable)

    def _lookup(self, fp: int) -> bool | None:
        """None: not suppressed; else whether the reason was a complaint. Called with the
        lock held."""
        overlay = self._overlay
        if overlay and fp in overlay:
            return overlay[fp]
        return self._index.lookup(fp)

    def suppressed(self, recipients: Iterable[str], scope: str = "",
                   mail_class: MailClass | int | str = MailClass.BULK) -> list[str]:
        """``check(...).suppressed``: the suppressed recipients only."""
        return self.check(recipients, scope, mail_class).suppressed

    def stats(self) -> CacheStats:
        with self._cond:
            applied = self._applied or 0
            age = float("inf") if self._fresh_at is None else time.monotonic() - self._fresh_at
            return CacheStats(self._applied is not None, self._connected, applied, self._head,
                              max(0, self._head - applied), age, self._size, self._reconnects,
                              self._snapshots, self._loading, len(self._overlay), self._shared,
                              self.foreign == 0)

    def held_bytes(self) -> tuple[int, int]:
        """(private, shared): bytes this process holds for the cache alone — a private
        index, the overlay and a snapshot being received — and the bytes of the index file
        mapped by all the pod's workers."""
        with self._cond:
            private = len(self._overlay) * OVERLAY_ENTRY_BYTES + \
                self._loading * LOADING_ENTRY_BYTES
            if self._shared:
                return private, self._index.nbytes
            return private + self._index.nbytes, 0

    def save_index(self, path: str | os.PathLike[str]) -> tuple[int, int]:
        """Write what the cache holds (index and overlay merged) as an index file for other
        processes to map; returns (entries, sequence)."""
        with self._cond:
            if self._applied is None:
                raise RuntimeError("no snapshot loaded yet")
            index, overlay, sequence = self._index, dict(self._overlay), self._applied
        merged = index.merged(overlay)
        merged.write(path, self.key, sequence)
        return len(merged), sequence

    @property
    def ready(self) -> bool:
        return self._applied is not None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def applied_sequence(self) -> int:
        return self._applied or 0

    @property
    def age_seconds(self) -> float:
        return self.stats().age_seconds

    @property
    def lag(self) -> int:
        return self.stats().lag

    def is_fresh(self, max_age: float | None = None) -> bool:
        """Whether answers are current: loaded, and confirmed up to date within ``max_age``
        seconds (default ``stale_after``). A stale cache's answers should be reported as
        such (SUPPRESSION_STALE), not trusted as complete."""
        return self.stats().fresh(self.stale_after if max_age is None else max_age)

    # --- the stream --------------------------------------------------------------------
    def _open_shared_index(self) -> bool:
        """Wait for the supervisor's index file and start from it; False when stopping.
        An unusable file is logged and waited past (the supervisor rebuilds it)."""
        assert self.index_path is not None
        reported = False
        while not self._stop.is_set():
            if self.index_path.exists():
                try:
                    index = SortedFingerprints.open(self.index_path, self.key)
                except IndexUnusable as exc:
                    if not reported:
                        log.error("%s: %s", self.name, exc)
                        reported = True
                else:
                    self._install_index(index, index.sequence, shared=True)
                    return True
            self._stop.wait(INDEX_POLL_SECONDS)
        return False

    def _run(self) -> None:
        backoff = 0.1
        if self.index_path is not None and not self._open_shared_index():
            return
        while not self._stop.is_set():
            try:
                channel = self._channel_factory(self.target, self._channel_options)
            except Exception as exc:  # e.g. TLS files not mounted yet: retry, never die
                log.warning("%s: cannot connect to %s: %s", self.name, self.target, exc)
                self._stop.wait(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.max_backoff)
                continue
            try:
                stub = pb_grpc.UnsubscribeStoreStub(channel)
                with self._cond:
                    resume = self._applied
                if resume is None and self._fingerprint_file is not None:
                    resume = self._take_fingerprint_snapshot(channel)
                request = pb.WatchRequest(snapshot=resume is None, from_sequence=resume or 0,
                                          heartbeat_seconds=self.heartbeat_seconds,
                                          batch_changes=True)
                call = self._call = stub.Watch(request)
                self._last_event = time.monotonic()
                if self._stop.is_set():
                    call.cancel()
                pending = FingerprintBuffer() if resume is None else None
                if pending is not None:
                    self.foreign = 0  # a snapshot holds every suppression: count afresh
                fingerprint = self.key.fingerprint
                for event in call:
                    self._last_event = time.monotonic()
                    if not self._connected:
                        self._connected = True
                        log.info("%s: watching %s from %s", self.name, self.target,
                                 "a snapshot" if resume is None else f"sequence {resume}")
                    backoff = 0.1
                    kind = event.WhichOneof("event")
                    if kind == "snapshot_chunk":
                        assert pending is not None, "a snapshot chunk without a snapshot"
                        # A forgotten suppression (no "@": the store keeps its fingerprint
                        # instead of the address) is rare; the test keeps the common path
                        # one call.
                        sups = event.snapshot_chunk.suppressions
                        prints = [fingerprint(s.address, s.scope) if "@" in s.address
                                  else self._stored(s.address, s.scope) for s in sups]
                        pending.extend([entry(fp, s.reason == pb.COMPLAINT)
                                        for fp, s in zip(prints, sups) if fp is not None])
                        self._loading = len(pending)
                    elif kind == "snapshot_end":
                        assert pending is not None, "a snapshot end without a snapshot"
                        self._install_index(pending.finish(), event.snapshot_end.sequence,
                                            shared=False)
                        pending = None
                        self._loading = 0
                    elif kind == "change_batch":
                        if not all(self._apply(c) for c in event.change_batch.changes):
                            break  # gap: reconnect for a fresh snapshot
                    elif kind == "change":
                        if not self._apply(event.change):
                            break  # gap: reconnect for a fresh snapshot
                    elif kind == "heartbeat":
                        with self._cond:
                            self._head = event.heartbeat.head_sequence
                            if self._applied is not None and self._applied >= self._head:
                                self._fresh_at = time.monotonic()
                            self._cond.notify_all()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.DATA_LOSS):
                    log.warning("%s: %s; taking a fresh snapshot", self.name, exc.details())
                    with self._cond:
                        self._applied = None
                elif not self._stop.is_set() and code != grpc.StatusCode.CANCELLED:
                    log.info("%s: stream to %s ended (%s); reconnecting", self.name, self.target,
                             code.name if code else exc)
            except Exception:  # never let the cache thread die: it would go silently stale
                log.exception("%s: unexpected error; reconnecting", self.name)
            finally:
                self._connected = False
                self._call = None
                self._loading = 0  # an unfinished snapshot is dropped
                channel.close()
            if self._stop.is_set():
                break
            with self._cond:
                self._reconnects += 1
            self._stop.wait(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self.max_backoff)

    def _take_fingerprint_snapshot(self, channel: grpc.Channel) -> int | None:
        """Install the store's fingerprint snapshot; its sequence, or None (then a Watch
        snapshot is taken). A store that does not serve one is not asked again."""
        assert self._fingerprint_file is not None
        from filter_server.server.suppression_artifact import (
            SnapshotNotServed,
            fetch_fingerprint_snapshot,
        )
        try:
            fetch_fingerprint_snapshot(channel, self.key, self._fingerprint_file)
            index = SortedFingerprints.open(self._fingerprint_file, self.key)
            # Mapped: the file's name is no longer needed (the mapping keeps its pages).
            self._fingerprint_file.unlink(missing_ok=True)
        except (SnapshotNotServed, IndexUnusable) as exc:
            log.info("%s: no fingerprint snapshot from the store (%s): taking a Watch "
                     "snapshot", self.name, exc)
            self._fingerprint_file = None
            return None
        self._install_index(index, index.sequence, shared=False)
        log.info("%s: downloaded the store's fingerprint snapshot: %d entries at sequence %d",
                 self.name, len(index), index.sequence)
        return index.sequence

    def _watch_silence(self) -> None:
        """Cancel a stream that has gone quiet (no heartbeat): a half-open TCP connection
        would otherwise leave the cache stale forever."""
        while not self._stop.wait(min(1.0, self.silence_timeout / 4)):
            call = self._call
            if call is not None and time.monotonic() - self._last_event > self.silence_timeout:
                log.warning("%s: no heartbeat for %.1fs; reconnecting", self.name,
                            self.silence_timeout)
                call.cancel()

    def _stored(self, address: str, scope: str) -> int | None:
        """The fingerprint of a suppression as the store keeps it (an address, or a
        forgotten one's fingerprint); None for one forgotten under another key, which this
        cache cannot apply: counted in ``foreign`` and logged once."""
        try:
            return self.key.stored_fingerprint(address, scope)
        except ForeignFingerprint as exc:
            self.foreign += 1
            if self.foreign == 1:
                log.error("%s: %s: this pod cannot apply forgotten suppressions, so it answers "
                          "SUPPRESSION_STALE; give it the store's fingerprint key "
                          "(--suppression-key-file)", self.name, exc)
            return None

    def _install_index(self, index: SortedFingerprints, sequence: int, *, shared: bool) -> None:
        with self._cond:
            self._index = index
            self._overlay = {}
            self._shared = shared
            self._size = len(index)
            self._applied = sequence
            self._head = max(self._head, sequence)
            self._snapshots += 1
            if self._applied >= self._head:
                self._fresh_at = time.monotonic()
            self._cond.notify_all()
        log.info("%s: %s of %d suppressions at sequence %d", self.name,
                 "shared index" if shared else "snapshot", len(index), sequence)

    def _apply(self, change: pb.Change) -> bool:
        with self._cond:
            if self._applied is None or change.sequence != self._applied + 1:
                log.error("%s: change %d does not follow %s; resnapshotting", self.name,
                          change.sequence, self._applied)
                self._applied = None
                return False
            fp = self._stored(change.address, change.scope)
            # None: kept under another key (counted and logged): nothing to apply, but the
            # sequence is consumed like any other.
            if fp is not None:
                was = self._lookup(fp)
                now = None if change.op == pb.RESUBSCRIBE else change.reason == pb.COMPLAINT
                self._size += (now is not None) - (was is not None)
                # An overlay entry equal to the index's is dropped, so the overlay holds
                # only what differs from the index.
                if now == self._index.lookup(fp):
                    self._overlay.pop(fp, None)
                else:
                    self._overlay[fp] = now
            self._applied = change.sequence
            self._head = max(self._head, change.sequence)
            if self._applied >= self._head:
                self._fresh_at = time.monotonic()
            self._cond.notify_all()
        if self.on_change is not None:
            self.on_change(change)
        return True


class SuppressionCacheCollector:
    """Prometheus collector for one cache: ``prometheus_client.REGISTRY.register(
    SuppressionCacheCollector(cache))`` in the filter server."""

    def __init__(self, cache: SuppressionCache, prefix: str = "mailwarden_suppression_cache"):
        self.cache = cache
        self.prefix = prefix

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        s = self.cache.stats()
        p = self.prefix
        yield GaugeMetricFamily(f"{p}_lag_sequences", "Changes committed at the store but not "
                                "yet applied by this cache", value=s.lag)
        yield GaugeMetricFamily(f"{p}_age_seconds", "Seconds since the cache was last known to "
                                "be up to date (+Inf before the first snapshot)",
                                value=s.age_seconds)
        yield GaugeMetricFamily(f"{p}_connected", "1 while the Watch stream is open",
                                value=1 if s.connected else 0)
        yield GaugeMetricFamily(f"{p}_ready", "1 once a snapshot is loaded",
                                value=1 if s.ready else 0)
        yield GaugeMetricFamily(f"{p}_entries", "Suppressions held", value=s.size)
        yield GaugeMetricFamily(f"{p}_applied_sequence", "Last change sequence applied",
                                value=s.applied_sequence)
        # A counter (exposed as ..._reconnects_total): it only grows, so rate() applies.
        yield CounterMetricFamily(f"{p}_reconnects", "Stream reconnections so far",
                                  value=s.reconnects)
