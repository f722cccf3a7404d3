"""The store's fingerprint snapshot (issue 15, cold start): a real store process on each
backend serves the suppression set as one index file of keyed fingerprints, a filter pod's
builder downloads it (filter_server/server/suppression_artifact.py), and the file is exactly
the store's state at the sequence it names — kept current by merging the change log — with
no address in it. Without the key, or with another one, the store refuses and says so."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest

from filter_server.server.suppression_artifact import (
    SnapshotNotServed,
    fetch_fingerprint_snapshot,
)
from mailwarden.fingerprint_index import SortedFingerprints
from mailwarden.fingerprints import FingerprintKey
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from testkit.store import RESUBSCRIBE_TOKEN

ADMIN = (("authorization", f"Bearer {RESUBSCRIBE_TOKEN}"),)
KEY_HEX = "5f" * 32


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "fingerprint-key"
    path.write_text(KEY_HEX + "\n")
    return path


def unsubscribe(stub, address: str, scope: str, reason: int = pb.UNSUBSCRIBE) -> int:
    return stub.Unsubscribe(pb.UnsubscribeRequest(
        address=address, scope=scope, reason=reason, source="test",
        idempotency_key=uuid.uuid4().hex), timeout=10).sequence


def snapshots_served(store) -> dict[str, float]:
    """The store's mailwarden_unsubscribe_fingerprint_snapshots_total, by outcome."""
    text = urllib.request.urlopen(store.metrics_url, timeout=10).read().decode()
    prefix = "mailwarden_unsubscribe_fingerprint_snapshots_total{outcome=\""
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def fetch(store, key: FingerprintKey, path: Path) -> tuple[SortedFingerprints, int]:
    with grpc.insecure_channel(store.target) as channel:
        entries, sequence = fetch_fingerprint_snapshot(channel, key, path)
    index = SortedFingerprints.open(path, key)
    assert (len(index), index.sequence) == (entries, sequence)
    return index, sequence


def test_the_store_serves_its_set_as_fingerprints_and_keeps_it_current(
        tmp_path: Path, start_store, store_args, key_file: Path) -> None:
    store = start_store(store_args, extra_args=[
        "--fingerprint-key-file", str(key_file), "--fingerprint-dir", str(tmp_path / "fp"),
        "--fingerprint-refresh-changes", "2"])
    stub = store.stub()
    key = FingerprintKey(bytes.fromhex(KEY_HEX))
    fp = key.fingerprint
    unsubscribe(stub, "Ann@Example.com", "weekly")
    unsubscribe(stub, "bob@example.com", "*")
    head = unsubscribe(stub, "carl@example.com", "weekly", pb.COMPLAINT)

    index, sequence = fetch(store, key, tmp_path / "pod.idx")
    assert sequence == head
    assert len(index) == 3
    # Normalised by the store, fingerprinted with the shared key, the complaint bit kept.
    assert index.lookup(fp("ann@example.com", "weekly")) is False
    assert index.lookup(fp("bob@example.com", "*")) is False
    assert index.lookup(fp("carl@example.com", "weekly")) is True
    assert index.lookup(fp("ann@example.com", "*")) is None
    data = (tmp_path / "pod.idx").read_bytes()
    assert b"example" not in data and b"weekly" not in data and b"ann" not in data

    # Changes after the file: below the refresh threshold the file may stay as it is (the
    # pod's Watch from its sequence replays them); at the threshold the store merges the
    # log into a new file. A resubscribe removes, a complaint escalates.
    stub.Resubscribe(pb.ResubscribeRequest(address="bob@example.com", scope="*",
                                           source="test"), metadata=ADMIN, timeout=10)
    unsubscribe(stub, "ann@example.com", "weekly", pb.COMPLAINT)
    head = unsubscribe(stub, "dora@example.com", "*")
    index, sequence = fetch(store, key, tmp_path / "pod.idx")
    assert sequence == head
    assert len(index) == 3
    assert index.lookup(fp("bob@example.com", "*")) is None
    assert index.lookup(fp("ann@example.com", "weekly")) is True
    assert index.lookup(fp("dora@example.com", "*")) is False
    assert index.lookup(fp("carl@example.com", "weekly")) is True
    assert snapshots_served(store) == {"sent": 2, "no_key": 0, "other_key": 0}


def test_without_the_key_or_with_another_the_store_says_so(
        tmp_path: Path, start_store, store_args, key_file: Path) -> None:
    pod_file = tmp_path / "pod.idx"
    keyless = start_store(store_args, name="keyless")
    with grpc.insecure_channel(keyless.target) as channel:
        with pytest.raises(SnapshotNotServed, match="no fingerprint key"):
            fetch_fingerprint_snapshot(channel, FingerprintKey(bytes.fromhex(KEY_HEX)),
                                       pod_file)
    assert snapshots_served(keyless)["no_key"] == 1
    keyless.close()
    keyed = start_store(store_args, name="keyed",
                        extra_args=["--fingerprint-key-file", str(key_file)])
    other = FingerprintKey(b"another key of thirty-two bytes!")
    with grpc.insecure_channel(keyed.target) as channel:
        with pytest.raises(SnapshotNotServed, match="another"):
            fetch_fingerprint_snapshot(channel, other, pod_file)
    # Nothing was left for a worker to map, and no key bytes in the store's log.
    assert not pod_file.exists() and not list(tmp_path.glob(".pod.idx.*"))
    assert snapshots_served(keyed) == {"sent": 0, "no_key": 0, "other_key": 1}
    assert KEY_HEX not in keyed.log()
