"""The filter pod's suppression index: keyed 64-bit fingerprints of (address, scope) in one
sorted array, never the addresses themselves.

    key = FingerprintKey.from_file("/etc/mailwarden/suppression-key/key")
    fp = key.fingerprint("ann@example.com", "newsletter")      # 63-bit int
    index = SortedFingerprints.open("/run/mailwarden/suppressions.idx", key)
    index.lookup(fp)   # None: not suppressed; False: suppressed; True: suppressed, complaint

Each entry is 8 bytes: the HMAC-SHA256 of ``scope NUL address`` (both already normalised),
truncated to 63 bits and shifted left, with the lowest bit set when the reason is a
complaint — the only thing about the reason the suppression rule needs (a complaint also
stops transactional mail). Two suppressions that collide in 63 bits look like one, so a
collision can only suppress a recipient that was not suppressed (about n / 2^63 per
look-up: 1e-11 at 100 M), never let one through — except a resubscribe of one of the two,
equally rare.

The index file, written once per pod by the supervisor's snapshot builder and mapped
read-only by every worker (the kernel keeps one copy in the page cache for all of them):

    header (64 bytes): magic, format version, entry count, the sequence of the store's
                       change log it reflects, the key's id (a hash, never the key)
    entries:           count little-endian uint64, sorted ascending, unique by fingerprint

Look-ups are a binary search over a ``memoryview`` of the mapping (``bisect`` in C): no
copy of the array in any worker. numpy sorts and merges when an index is built.
"""

from __future__ import annotations

import bisect
import hmac
import mmap
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from filter_server.server.suppression_key import FingerprintKey

MAGIC = b"MWSUPIX1"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQQ8s24x")  # magic, version, reserved, count, sequence, key id
HEADER_BYTES = HEADER.size  # 64
ENTRY_DTYPE = np.dtype("<u8")
ENTRY_BYTES = ENTRY_DTYPE.itemsize


class IndexUnusable(Exception):
    """An index file that cannot be used (the message says why)."""

# How many entries a builder adds to its buffer at a time (8 MiB), then doubles.
_GROW_ENTRIES = 1 << 20


def entry(fingerprint: int, complaint: bool) -> int:
    return (fingerprint << 1) | (1 if complaint else 0)


def _unique(sorted_entries: np.ndarray) -> np.ndarray:
    """One entry per fingerprint; when a collision left two, the complaint (odd, so sorted
    last) is kept: the stricter of the two."""
    if len(sorted_entries) < 2:
        return sorted_entries
    fps = sorted_entries >> np.uint64(1)
    keep = np.empty(len(sorted_entries), dtype=bool)
    np.not_equal(fps[1:], fps[:-1], out=keep[:-1])
    keep[-1] = True
    return sorted_entries if keep.all() else sorted_entries[keep]


class FingerprintBuffer:
    """Entries appended while a snapshot streams in, in a growing numpy buffer (8 bytes
    each; no per-entry Python object outlives its chunk)."""

    def __init__(self) -> None:
        self._data = np.empty(_GROW_ENTRIES, dtype=ENTRY_DTYPE)
        self._used = 0

    def __len__(self) -> int:
        return self._used

    def extend(self, entries: list[int]) -> None:
        need = self._used + len(entries)
        if need > len(self._data):
            grown = np.empty(max(need, 2 * len(self._data)), dtype=ENTRY_DTYPE)
            grown[:self._used] = self._data[:self._used]
            self._data = grown
        self._data[self._used:need] = entries
        self._used = need

    def finish(self) -> SortedFingerprints:
        data = self._data[:self._used]
        data.sort()
        self._data = np.empty(0, dtype=ENTRY_DTYPE)
        self._used = 0
        return SortedFingerprints(_unique(data).copy())


class SortedFingerprints:
    """A read-only sorted array of entries with binary-search look-up. Either owns a numpy
    array (built in this process) or a read-only mapping of an index file."""

    def __init__(self, entries: np.ndarray, *, sequence: int = 0,
                 mapping: mmap.mmap | None = None) -> None:
        self.array = entries
        self.sequence = sequence
        self._mapping = mapping
        # bisect over a memoryview of native integers: a numpy scalar search costs more in
        # call overhead than the search itself. (On a big-endian host this copies.)
        native = np.ascontiguousarray(entries, dtype=np.uint64)
        self._view = memoryview(native.view(np.uint8)).cast("Q")

    def __len__(self) -> int:
        return len(self.array)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def lookup(self, fingerprint: int) -> bool | None:
        """None if absent; else whether it is a complaint."""
        view = self._view
        low = fingerprint << 1
        i = bisect.bisect_left(view, low)  # type: ignore[call-overload]
        if i < len(view):
            found = view[i]
            if found >> 1 == fingerprint:
                return bool(found & 1)
        return None

    def merged(self, overlay: Mapping[int, bool | None]) -> SortedFingerprints:
        """A new index with the overlay's changes (fingerprint → complaint, None: removed)."""
        if not overlay:
            return SortedFingerprints(self.array.copy(), sequence=self.sequence)
        changed = np.fromiter((fp << 1 for fp in overlay), dtype=ENTRY_DTYPE,
                              count=len(overlay))
        changed.sort()
        base = self.array
        # Drop every base entry whose fingerprint the overlay mentions, then add the
        # overlay's present ones.
        fps = base >> np.uint64(1)
        mentioned = np.isin(fps, changed >> np.uint64(1), assume_unique=False)
        added = np.fromiter((entry(fp, bool(c)) for fp, c in overlay.items() if c is not None),
                            dtype=ENTRY_DTYPE)
        out = np.concatenate((base[~mentioned], added))
        out.sort()
        return SortedFingerprints(_unique(out), sequence=self.sequence)

    # --- the file ---------------------------------------------------------------------
    def write(self, path: str | os.PathLike[str], key: FingerprintKey, sequence: int) -> None:
        """Write atomically (a temporary file renamed into place): readers see the old
        index or the whole new one."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            with open(tmp, "wb") as out:
                out.write(HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(self.array), sequence,
                                      key.key_id))
                self.array.astype(ENTRY_DTYPE, copy=False).tofile(out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], key: FingerprintKey) -> SortedFingerprints:
        """Map an index file read-only. Raises IndexUnusable (with the reason) for a file that
        is not an index, is truncated, or was made with another key."""
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER_BYTES:
                    raise IndexUnusable(f"{path}: not a suppression index ({size} bytes)")
                mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise IndexUnusable(f"cannot open the suppression index {path}: "
                              f"{exc.strerror or exc}") from None
        magic, version, _, count, sequence, key_id = HEADER.unpack_from(mapping, 0)
        if magic != MAGIC or version != FORMAT_VERSION:
            mapping.close()
            raise IndexUnusable(f"{path}: not a suppression index of format {FORMAT_VERSION}")
        if size != HEADER_BYTES + 8 * count:
            mapping.close()
            raise IndexUnusable(f"{path}: truncated ({size} bytes for {count} entries)")
        if not hmac.compare_digest(key_id, key.key_id):
            mapping.close()
            raise IndexUnusable(f"{path}: made with another fingerprint key "
                              f"(id {key_id.hex()}, ours {key.key_id.hex()})")
        array = np.frombuffer(mapping, dtype=ENTRY_DTYPE, count=count, offset=HEADER_BYTES)
        return cls(array, sequence=sequence, mapping=mapping)


def build(entries: Iterable[tuple[str, str, bool]], key: FingerprintKey) -> SortedFingerprints:
    """An index of (normalised address, normalised scope, complaint) triples."""
    buffer = FingerprintBuffer()
    batch: list[int] = []
    for address, scope, complaint in entries:
        batch.append(entry(key.fingerprint(address, scope), complaint))
        if len(batch) >= 4096:
            buffer.extend(batch)
            batch = []
    buffer.extend(batch)
    return buffer.finish()
