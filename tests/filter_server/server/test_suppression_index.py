"""The suppression index a filter pod holds instead of addresses (issue 15): keyed 63-bit
fingerprints in one sorted array, an index file mapped read-only, and the cache's overlay
of later changes — answering exactly what the suppression rule (`mailwarden.suppression.
applies`) answers over the plaintext set."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from filter_server.server.suppression_cache import SuppressionCache
from mailwarden.fingerprint_index import (
    HEADER_BYTES,
    IndexUnusable,
    SortedFingerprints,
    build,
    entry,
)
from mailwarden.fingerprints import FingerprintKey, KeyUnusable
from mailwarden.suppression import MailClass, Reason, applies
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb

KEY = FingerprintKey(b"k" * 32)


def test_fingerprints_depend_on_the_key_the_address_and_the_scope() -> None:
    other = FingerprintKey(b"o" * 32)
    fp = KEY.fingerprint("ann@example.com", "news")
    assert fp == KEY.fingerprint("ann@example.com", "news")
    assert 0 <= fp < 1 << 63
    assert len({fp, other.fingerprint("ann@example.com", "news"),
                KEY.fingerprint("ann@example.com", "*"),
                KEY.fingerprint("bob@example.com", "news")}) == 4


def test_key_files_raw_or_hex_and_clear_errors_that_never_show_the_key(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(b"s" * 40)
    hexed = tmp_path / "hex"
    hexed.write_text(("ab" * 32) + "\n")
    assert FingerprintKey.from_file(raw).key_id == FingerprintKey(b"s" * 40).key_id
    assert FingerprintKey.from_file(hexed).key_id == FingerprintKey(bytes([0xAB]) * 32).key_id
    short = tmp_path / "short"
    short.write_text("secret-but-short")
    with pytest.raises(KeyUnusable) as err:
        FingerprintKey.from_file(short)
    assert "at least 32" in str(err.value) and "secret-but-short" not in str(err.value)
    with pytest.raises(KeyUnusable, match="cannot read"):
        FingerprintKey.from_file(tmp_path / "missing")
    assert "ssss" not in repr(FingerprintKey.from_file(raw))
    written = tmp_path / "written"
    key = FingerprintKey.generate()
    key.write(written)
    assert written.stat().st_mode & 0o077 == 0
    assert FingerprintKey.from_file(written).key_id == key.key_id


def test_lookup_finds_members_and_their_complaint_bit_only() -> None:
    members = [(f"reader{i}@example.com", "news" if i % 3 else "*", i % 5 == 0)
               for i in range(5000)]
    index = build(members, KEY)
    assert len(index) == 5000 and index.directory.nbytes <= 5000 * 0.5
    assert index.nbytes == 5000 * 8 + index.directory.nbytes
    for address, scope, complaint in members[:500]:
        assert index.lookup(KEY.fingerprint(address, scope)) is complaint
    for i in range(500):
        assert index.lookup(KEY.fingerprint(f"stranger{i}@example.com", "news")) is None
    assert build([], KEY).lookup(12345) is None


def test_a_fingerprint_collision_keeps_the_stricter_entry() -> None:
    buffer = np.array([entry(7, False), entry(7, True), entry(3, False)], dtype="<u8")
    buffer.sort()
    from mailwarden.fingerprint_index import _unique
    index = SortedFingerprints(_unique(buffer))
    assert len(index) == 2 and index.lookup(7) is True and index.lookup(3) is False


def test_index_file_round_trip_holds_no_address(tmp_path: Path) -> None:
    index = build([("ann@example.com", "news", False), ("bob@example.com", "*", True)], KEY)
    path = tmp_path / "suppressions.idx"
    index.write(path, KEY, sequence=17)
    data = path.read_bytes()
    assert len(data) == HEADER_BYTES + 8 + 16  # header, directory of 2 slots, 2 entries
    assert b"ann" not in data and b"example" not in data and b"k" * 32 not in data
    mapped = SortedFingerprints.open(path, KEY)
    assert mapped.sequence == 17 and len(mapped) == 2
    assert mapped.lookup(KEY.fingerprint("bob@example.com", "*")) is True
    assert mapped.lookup(KEY.fingerprint("ann@example.com", "news")) is False
    with pytest.raises(IndexUnusable, match="another fingerprint key"):
        SortedFingerprints.open(path, FingerprintKey(b"o" * 32))
    truncated = tmp_path / "truncated.idx"
    truncated.write_bytes(data[:-3])
    with pytest.raises(IndexUnusable, match="truncated"):
        SortedFingerprints.open(truncated, KEY)
    other = tmp_path / "other"
    other.write_bytes(b"x" * 100)
    with pytest.raises(IndexUnusable, match="not a suppression index"):
        SortedFingerprints.open(other, KEY)


def test_merged_applies_the_overlay() -> None:
    index = build([("a@example.com", "*", False), ("b@example.com", "*", False)], KEY)
    fa, fb, fc = (KEY.fingerprint(f"{c}@example.com", "*") for c in "abc")
    merged = index.merged({fa: None, fb: True, fc: False})
    assert merged.lookup(fa) is None and merged.lookup(fb) is True
    assert merged.lookup(fc) is False and len(merged) == 2


def _change(seq: int, address: str, scope: str, reason: int = pb.UNSUBSCRIBE,
            op: int = pb.SUPPRESS) -> pb.Change:
    return pb.Change(sequence=seq, op=op, address=address, scope=scope, reason=reason)


def test_the_cache_answers_the_rule_over_index_and_overlay(tmp_path: Path) -> None:
    """A random suppression set, half of it in a mapped index and half applied as changes
    (adds, escalations, resubscribes), against `applies` over the same set in plaintext."""
    rng = random.Random(15)
    addresses = [f"user{i}@example.com" for i in range(300)]
    scopes = ["*", "news", "promo"]
    truth: dict[str, dict[str, Reason]] = {}
    initial = []
    for address in addresses:
        for scope in scopes:
            if rng.random() < 0.25:
                reason = rng.choice([Reason.UNSUBSCRIBE, Reason.COMPLAINT])
                truth.setdefault(address, {})[scope] = reason
                initial.append((address, scope, reason == Reason.COMPLAINT))
    path = tmp_path / "suppressions.idx"
    build(initial, KEY).write(path, KEY, sequence=100)
    cache = SuppressionCache("127.0.0.1:1", key=KEY, index_path=path)
    assert cache._open_shared_index()
    assert cache.stats().shared_index and cache.stats().size == len(initial)
    seq = 100
    for _ in range(600):
        seq += 1
        address, scope = rng.choice(addresses), rng.choice(scopes)
        if rng.random() < 0.4:
            cache._apply(_change(seq, address, scope, op=pb.RESUBSCRIBE))
            truth.get(address, {}).pop(scope, None)
        else:
            complaint = rng.random() < 0.3
            cache._apply(_change(seq, address, scope,
                                 pb.COMPLAINT if complaint else pb.UNSUBSCRIBE))
            truth.setdefault(address, {})[scope] = \
                Reason.COMPLAINT if complaint else Reason.UNSUBSCRIBE
    assert cache.stats().size == sum(len(v) for v in truth.values())
    assert cache.applied_sequence == seq
    for scope in ["", "*", "news", "promo", "other"]:
        for klass in (MailClass.BULK, MailClass.TRANSACTIONAL):
            expected = [a for a in addresses if applies(truth.get(a, {}), scope, klass)]
            assert cache.suppressed(addresses, scope, klass) == expected, (scope, klass)
    # Saved for other processes, the merged index answers the same.
    saved = tmp_path / "saved.idx"
    assert cache.save_index(saved) == (cache.stats().size, seq)
    again = SuppressionCache("127.0.0.1:1", key=KEY, index_path=saved)
    assert again._open_shared_index() and again.applied_sequence == seq
    assert again.stats().overlay == 0
    assert again.suppressed(addresses, "news") == cache.suppressed(addresses, "news")


def test_a_gap_after_the_index_sequence_asks_for_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "suppressions.idx"
    build([], KEY).write(path, KEY, sequence=10)
    cache = SuppressionCache("127.0.0.1:1", key=KEY, index_path=path)
    assert cache._open_shared_index()
    assert not cache._apply(_change(12, "a@example.com", "*"))
    assert not cache.ready


def test_a_shared_index_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the key"):
        SuppressionCache("127.0.0.1:1", index_path=tmp_path / "x.idx")


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 5000])
def test_the_directory_finds_every_entry_at_every_size(tmp_path: Path, count: int) -> None:
    """Look-ups go through the directory of top bits: every member is found and nothing
    else, in memory and through the mapped file, at bucket boundaries too."""
    rng = np.random.default_rng(count)
    fps = np.unique(rng.integers(0, 1 << 63, size=count, dtype=np.uint64))
    edges = np.array([0, (1 << 63) - 1, 1 << 62, (1 << 62) - 1], dtype=np.uint64)
    fps = np.unique(np.concatenate([fps, edges[:min(count, 4)]]))
    index = SortedFingerprints(np.sort(fps << np.uint64(1)))
    path = tmp_path / "d.idx"
    index.write(path, KEY, sequence=1)
    mapped = SortedFingerprints.open(path, KEY)
    for each in (index, mapped):
        assert all(each.lookup(int(fp)) is False for fp in fps)
        present = set(int(fp) for fp in fps)
        probes = [int(x) for x in rng.integers(0, 1 << 63, size=500, dtype=np.uint64)]
        probes += [int(fp) + 1 for fp in fps[:50] if fp < (1 << 63) - 1]
        probes += [int(fp) - 1 for fp in fps[:50] if fp]
        assert all(each.lookup(p) is None for p in probes if p not in present)


@pytest.mark.parametrize("key", [b"k" * 32, b"long" * 40])
def test_fingerprints_are_keyed_blake2b_of_scope_and_address(key: bytes) -> None:
    import hashlib
    # BLAKE2b takes at most 64 key bytes: a longer key is hashed down to 64 first.
    mac_key = key if len(key) <= 64 else hashlib.blake2b(key, digest_size=64).digest()
    for address, scope in [("ann@example.com", "news"), ("bücher@xn--bcher-kva.example", "*")]:
        data = f"{scope}\0{address}".encode()
        expected = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=mac_key).digest(),
                                  "little") >> 1
        assert FingerprintKey(key).fingerprint(address, scope) == expected
        assert FingerprintKey(key).fingerprint_bytes(data) == expected


def test_an_index_of_the_former_format_is_refused_not_misread(tmp_path: Path) -> None:
    """A pod upgraded over an index written by format 2 (HMAC-SHA256 fingerprints): its
    entries would never match a BLAKE2b fingerprint, so opening it must fail (the pod
    rebuilds) instead of silently suppressing nobody."""
    import struct

    from mailwarden.fingerprint_index import HEADER, MAGIC
    path = tmp_path / "old.idx"
    index = build([("ann@example.com", "*", False)], KEY)
    index.write(path, KEY, 7)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 8, 2)  # the version field, right after the magic
    assert HEADER.unpack_from(raw, 0)[0] == MAGIC
    old = tmp_path / "v2.idx"
    old.write_bytes(bytes(raw))
    with pytest.raises(IndexUnusable, match="format 3"):
        SortedFingerprints.open(old, KEY)
    assert SortedFingerprints.open(path, KEY).lookup(KEY.fingerprint("ann@example.com", "*")) \
        is False
