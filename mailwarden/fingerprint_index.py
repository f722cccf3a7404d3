"""The filter pod's suppression index: keyed 64-bit fingerprints of (address, scope) in one
sorted array, never the addresses themselves.

    key = FingerprintKey.from_file("/etc/mailwarden/suppression-key/key")
    fp = key.fingerprint("ann@example.com", "newsletter")      # 63-bit int
    index = SortedFingerprints.open("/run/mailwarden/suppressions.idx", key)
    index.lookup(fp)   # None: not suppressed; False: suppressed; True: suppressed, complaint

Each entry is 8 bytes: the keyed BLAKE2b of ``scope NUL address`` (both already normalised),
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
    directory:         2^bits + 1 little-endian uint32: where the entries whose top `bits`
                       bits are b begin (about one per 8-16 entries, < 0.5 bytes each),
                       padded to 8 bytes
    entries:           count little-endian uint64, sorted ascending, unique by fingerprint

A look-up reads the directory slot of its top bits, then binary-searches the dozen entries
of that bucket (``bisect`` in C over a ``memoryview`` of the mapping): two cache misses
instead of ~27 for a plain binary search over 100 M entries, and no copy of the array in
any worker. numpy sorts, merges and builds the directory when an index is built.
"""

from __future__ import annotations

import bisect
import hmac
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from mailwarden.fingerprints import FingerprintKey

MAGIC = b"MWSUPIX1"
FORMAT_VERSION = 3  # 3: keyed-BLAKE2b fingerprints (2 was HMAC-SHA256)
# magic, version, directory bits, entry count, sequence, key id
HEADER = struct.Struct("<8sIIQQ8s24x")
HEADER_BYTES = HEADER.size  # 64
ENTRY_DTYPE = np.dtype("<u8")
ENTRY_BYTES = ENTRY_DTYPE.itemsize


class IndexUnusable(Exception):
    """An index file that cannot be used (the message says why)."""

# How many entries a builder adds to its buffer at a time (8 MiB), then doubles.
_GROW_ENTRIES = 1 << 20


DIRECTORY_DTYPE = np.dtype("<u4")
MAX_DIRECTORY_BITS = 28
MAX_ENTRIES = (1 << 32) - 1  # directory slots are uint32


def directory_bits(count: int) -> int:
    """About one directory slot per 8-16 entries."""
    return min(MAX_DIRECTORY_BITS, max(0, count.bit_length() - 4))


def _directory_bytes(bits: int) -> int:
    return (((1 << bits) + 1) * 4 + 7) // 8 * 8


def build_directory(entries: np.ndarray) -> np.ndarray:
    """directory[b] = the first entry whose top bits are >= b; directory[-1] = count."""
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"a suppression index holds at most {MAX_ENTRIES} entries")
    bits = directory_bits(len(entries))
    bounds = np.arange(1 << bits, dtype=np.uint64) << np.uint64(64 - bits) if bits else \
        np.zeros(1, dtype=np.uint64)
    starts = np.searchsorted(entries, bounds, side="left")
    return np.append(starts, len(entries)).astype(DIRECTORY_DTYPE)


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
                 directory: np.ndarray | None = None,
                 mapping: mmap.mmap | None = None) -> None:
        self.array = entries
        self.sequence = sequence
        self._mapping = mapping
        if directory is None:
            directory = build_directory(entries)
        self.directory = directory
        self._shift = 64 - (len(directory) - 1).bit_length() + 1
        # bisect over a memoryview of native integers: a numpy scalar search costs more in
        # call overhead than the search itself. (On a big-endian host this copies.)
        native = np.ascontiguousarray(entries, dtype=np.uint64)
        self._view = native.view(np.uint8).data.cast("Q")
        self._dir = np.ascontiguousarray(directory, dtype=np.uint32).view(np.uint8).data \
            .cast("I")
        # ``lookup(fingerprint)``: None if absent, else whether it is a complaint.
        self.lookup = _lookup_function(self._view, self._dir, self._shift)

    def __len__(self) -> int:
        return len(self.array)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes + self.directory.nbytes)

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
                bits = (len(self.directory) - 1).bit_length() - 1
                out.write(HEADER.pack(MAGIC, FORMAT_VERSION, bits, len(self.array), sequence,
                                      key.key_id))
                self.directory.astype(DIRECTORY_DTYPE, copy=False).tofile(out)
                out.write(b"\0" * (_directory_bytes(bits) - self.directory.nbytes))
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
        magic, version, bits, count, sequence, key_id = HEADER.unpack_from(mapping, 0)
        if magic != MAGIC or version != FORMAT_VERSION or bits > MAX_DIRECTORY_BITS:
            mapping.close()
            raise IndexUnusable(f"{path}: not a suppression index of format {FORMAT_VERSION}")
        entries_at = HEADER_BYTES + _directory_bytes(bits)
        if size != entries_at + 8 * count:
            mapping.close()
            raise IndexUnusable(f"{path}: truncated ({size} bytes for {count} entries)")
        if not hmac.compare_digest(key_id, key.key_id):
            mapping.close()
            raise IndexUnusable(f"{path}: made with another fingerprint key "
                              f"(id {key_id.hex()}, ours {key.key_id.hex()})")
        directory = np.frombuffer(mapping, dtype=DIRECTORY_DTYPE, count=(1 << bits) + 1,
                                  offset=HEADER_BYTES)
        if int(directory[-1]) != count:
            mapping.close()
            raise IndexUnusable(f"{path}: its directory does not match its entries")
        array = np.frombuffer(mapping, dtype=ENTRY_DTYPE, count=count, offset=entries_at)
        return cls(array, sequence=sequence, directory=directory, mapping=mapping)


def _lookup_function(view: memoryview, directory: memoryview, shift: int
                     ) -> Callable[[int], bool | None]:
    """The look-up of one index as a closure over its views: it runs once or twice per
    recipient in Classify, and locals cost less than attribute look-ups on self
    (benchmarks/suppression_scale.py prints the cost)."""
    bisect_left = bisect.bisect_left

    def lookup(fingerprint: int) -> bool | None:
        low = fingerprint << 1
        bucket = low >> shift
        hi = directory[bucket + 1]
        i = bisect_left(view, low, directory[bucket], hi)
        if i < hi:
            found = view[i]
            if found >> 1 == fingerprint:
                return found & 1 == 1
        return None

    return lookup


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
