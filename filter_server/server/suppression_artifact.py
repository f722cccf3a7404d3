"""Fetch the store's fingerprint snapshot (FingerprintSnapshot): the pod's suppression index
file in one bulk transfer, for a cold start in seconds instead of one Watch message per
suppression (unsubscribe_store/artifact.py builds it).

The bytes are written to a temporary file beside the index, checked as an index of this
pod's key and format (``SortedFingerprints.open``: magic, version, key id, size, directory),
and only then renamed into place — a transfer cut short, or a store with another key,
never leaves a file a worker would map.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from mailwarden.fingerprint_index import IndexUnusable, SortedFingerprints
from mailwarden.fingerprints import FingerprintKey
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc

# The store cannot serve one (no key, another key, or a store from before the method):
# the caller takes a Watch snapshot instead.
NOT_SERVED = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED)


class SnapshotNotServed(Exception):
    """The store does not serve a fingerprint snapshot for this key (the message says
    why); take a Watch snapshot instead."""


def fetch_fingerprint_snapshot(channel: grpc.Channel, key: FingerprintKey,
                               index_file: str | os.PathLike[str]) -> tuple[int, int]:
    """Download the store's fingerprint snapshot into ``index_file``; (entries, sequence).
    Raises SnapshotNotServed, grpc.RpcError (store unreachable: retry) or IndexUnusable
    (the bytes are not a usable index)."""
    index_file = Path(index_file)
    tmp = index_file.with_name(f".{index_file.name}.{os.getpid()}.download")
    stub = pb_grpc.UnsubscribeStoreStub(channel)
    try:
        with open(tmp, "wb") as out:
            expected = None
            for chunk in stub.FingerprintSnapshot(pb.FingerprintSnapshotRequest(
                    key_id=key.key_id)):
                if expected is None:
                    expected = chunk.size
                out.write(chunk.data)
            written = out.tell()
        if expected is None or written != expected:
            raise IndexUnusable(f"the store's fingerprint snapshot ended after {written} of "
                                f"{expected} bytes")
        index = SortedFingerprints.open(tmp, key)
        entries, sequence = len(index), index.sequence
        del index
        os.chmod(tmp, 0o444)
        os.replace(tmp, index_file)
        return entries, sequence
    except grpc.RpcError as exc:
        if exc.code() in NOT_SERVED:
            raise SnapshotNotServed(exc.details() or exc.code().name) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
