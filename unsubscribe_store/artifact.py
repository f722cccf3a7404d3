"""FingerprintArtifact: the store's compact snapshot for filter pods — every suppression as
a keyed 8-byte fingerprint in one sorted index file (mailwarden/fingerprint_index.py), so
a new filter pod loads its suppression set in one bulk transfer (FingerprintSnapshot)
instead of one gRPC message per suppression, then Watches from the file's sequence.

    artifact = FingerprintArtifact(store, FingerprintKey.from_file(path), directory)
    path = await artifact.current()   # an index file at most `refresh_changes` behind

The first call builds the file from a snapshot of the store (page by page, as a Watch
snapshot reads it: head S first, so every change after S is in the log and the consumer's
Watch from S makes its set exact). Later calls refresh it when the store's head has moved
`refresh_changes` or more past the file: the changes after S are read from the log,
fingerprinted, merged into the sorted array (numpy, in a thread, so the event loop keeps
serving) and written as a new file — atomically renamed, so a transfer in progress keeps
reading the file it opened. When the log no longer reaches back to S (compacted) or went
back below it (a restore), the file is rebuilt from a snapshot.

The store holds no array of its own: the file is mapped read-only and the page cache keeps
it (8 bytes per suppression, plus a directory of < 0.5 bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from mailwarden.fingerprint_index import FingerprintBuffer, SortedFingerprints, entry
from mailwarden.fingerprints import FingerprintKey
from mailwarden.suppression import Reason
from unsubscribe_store.model import Op
from unsubscribe_store.store import Store

log = logging.getLogger(__name__)

FILE_NAME = "fingerprints.idx"
# A refresh is due when the head is this many changes past the file. Below it a consumer
# replays the difference from the change log's window; above it, merging (O(n) in numpy,
# ~0.3 s at 10 M) costs less than every new pod replaying the changes one by one.
DEFAULT_REFRESH_CHANGES = 10_000
# Rows per page of the build's snapshot read.
BUILD_PAGE = 5_000
# Changes per read of the log during a refresh.
LOG_PAGE = 5_000


class FingerprintArtifact:
    def __init__(self, store: Store, key: FingerprintKey, directory: str | Path, *,
                 refresh_changes: int = DEFAULT_REFRESH_CHANGES) -> None:
        self.store = store
        self.key = key
        self.path = Path(directory) / FILE_NAME
        self.refresh_changes = refresh_changes
        self._index: SortedFingerprints | None = None
        self._lock = asyncio.Lock()
        self.builds = 0      # full builds from a snapshot
        self.refreshes = 0   # merges of the log into the file

    @property
    def sequence(self) -> int | None:
        """The change-log sequence the current file reflects (None: not built yet)."""
        return None if self._index is None else self._index.sequence

    async def current(self) -> Path:
        """The path of an index file at most ``refresh_changes`` behind the store's head
        (built or refreshed first when needed). Raises StoreUnavailable."""
        async with self._lock:
            head = await self.store.head()
            index = self._index
            if index is None or head < index.sequence:
                if index is not None:
                    log.warning("the change log went back from %d to %d: rebuilding the "
                                "fingerprint snapshot", index.sequence, head)
                await self._build()
            elif head - index.sequence >= self.refresh_changes:
                if not await self._refresh(index, head):
                    await self._build()
            return self.path

    async def _build(self) -> None:
        started = time.monotonic()
        buffer = FingerprintBuffer()
        # Forgotten suppressions keep their fingerprint (the server refuses to start with a
        # key other than the one they were forgotten under).
        fingerprint = self.key.stored_fingerprint
        complaint = Reason.COMPLAINT
        sequence = 0
        async with contextlib.aclosing(self.store.snapshot(BUILD_PAGE)) as pages:
            async for head, batch in pages:
                sequence = head
                buffer.extend([entry(fingerprint(s.address, s.scope), s.reason == complaint)
                               for s in batch])
        built = buffer.finish()
        await asyncio.to_thread(built.write, self.path, self.key, sequence)
        self._install()
        self.builds += 1
        log.info("fingerprint snapshot of %d suppressions at sequence %d built in %.1fs",
                 len(built), sequence, time.monotonic() - started)

    async def _refresh(self, index: SortedFingerprints, head: int) -> bool:
        """Merge the log's changes after the file's sequence up to at least ``head``; False
        when the log does not reach back that far (or has a gap): the caller rebuilds."""
        started = time.monotonic()
        overlay: dict[int, bool | None] = {}
        cursor = index.sequence
        fingerprint = self.key.stored_fingerprint
        while True:
            changes = await self.store.changes_after(cursor, LOG_PAGE)
            for change in changes:
                if change.sequence != cursor + 1:
                    log.info("the change log has no sequence %d (compacted): rebuilding the "
                             "fingerprint snapshot", cursor + 1)
                    return False
                cursor = change.sequence
                overlay[fingerprint(change.address, change.scope)] = (
                    None if change.op == Op.RESUBSCRIBE
                    else change.reason == Reason.COMPLAINT)
            if len(changes) < LOG_PAGE:
                break
        if cursor < head:  # the changes up to head are gone from the log (compacted)
            log.info("the change log ends at %d, before the head %d (compacted): rebuilding "
                     "the fingerprint snapshot", cursor, head)
            return False
        merged = await asyncio.to_thread(index.merged, overlay)
        await asyncio.to_thread(merged.write, self.path, self.key, cursor)
        self._install()
        self.refreshes += 1
        log.info("fingerprint snapshot refreshed to sequence %d (%d changes) in %.2fs",
                 cursor, len(overlay), time.monotonic() - started)
        return True

    def _install(self) -> None:
        # Map the file just written: the page cache holds the entries, not this process.
        self._index = SortedFingerprints.open(self.path, self.key)
