"""Build the pod's shared suppression index, the file every worker maps
(mailwarden/fingerprint_index.py): download the store's fingerprint snapshot when it serves
one for this pod's key (server/suppression_artifact.py: one bulk transfer), else take a
Watch snapshot, fingerprint it and write the file.

The supervisor runs this as its own process (`python -m
filter_server.server.suppression_snapshot WORKER_CONFIG_JSON INDEX_FILE`), so the transient
memory of a build — the snapshot's fingerprints before sorting, twice while the buffer
grows — is given back to the system when it exits, and the supervisor itself holds no gRPC
state. It makes its SuppressionCache as the workers do (`suppression_setup.follow_store`,
from the workers' configuration: same store, key and channel), takes the snapshot, and
writes it with the changes it saw after it merged in.

Exit status 0 once the file is in place; 2 for a key that cannot be used; on SIGTERM it
stops without writing.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import grpc

from filter_server.server.config import ServeConfig
from filter_server.server.suppression_artifact import (
    SnapshotNotServed,
    fetch_fingerprint_snapshot,
)
from filter_server.server.suppression_setup import follow_store, store_channel
from mailwarden.fingerprint_index import IndexUnusable
from mailwarden.fingerprints import FingerprintKey, KeyUnusable

log = logging.getLogger(__name__)


def build_index_file(config: ServeConfig, index_file: str,
                     stop: threading.Event | None = None) -> tuple[int, int] | None:
    """Snapshot the store into `index_file`; (entries, sequence), or None if stopped.
    Raises KeyUnusable."""
    stop = stop or threading.Event()
    if config.suppression_key_file is not None:
        key = FingerprintKey.from_file(config.suppression_key_file)
        channel = store_channel(config)
        try:
            entries, sequence = fetch_fingerprint_snapshot(channel, key, index_file)
            log.info("downloaded the store's fingerprint snapshot: %d entries at sequence %d",
                     entries, sequence)
            return entries, sequence
        except SnapshotNotServed as exc:
            log.info("no fingerprint snapshot from the store (%s): taking a Watch snapshot",
                     exc)
        except IndexUnusable as exc:  # e.g. a store of another index format: never misread
            log.warning("the store's fingerprint snapshot is unusable (%s): taking a Watch "
                        "snapshot", exc)
        finally:
            channel.close()
    cache = follow_store(config, name="suppression-index-builder").start()
    try:
        while not stop.is_set():
            if cache.wait_ready(0.2):
                return cache.save_index(index_file)
        return None
    finally:
        cache.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m filter_server.server.suppression_snapshot WORKER_CONFIG_JSON "
              "INDEX_FILE", file=sys.stderr)
        return 2
    config, index_file = ServeConfig.from_json(argv[0]), argv[1]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    try:
        built = build_index_file(config, index_file, stop)
    except KeyUnusable as exc:
        print(f"suppression index: {exc}", file=sys.stderr)
        return 2
    except IndexUnusable as exc:  # the store sent something unusable: retried later
        print(f"suppression index: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:  # store unreachable: the supervisor retries with backoff
        print(f"suppression index: the store did not answer: "
              f"{exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if built is None:
        return 0
    entries, sequence = built
    log.info("suppression index of %d entries at sequence %d built in %.1fs", entries,
             sequence, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
