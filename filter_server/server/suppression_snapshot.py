"""Build the pod's shared suppression index: take one snapshot from the UnsubscribeStore,
fingerprint it and write the index file every worker maps (server/suppression_index.py).

The supervisor runs this as its own process (`python -m
filter_server.server.suppression_snapshot TARGET INDEX_FILE KEY_FILE`), so the transient
memory of a build — the snapshot's fingerprints before sorting, twice while the buffer
grows — is given back to the system when it exits, and the supervisor itself holds no gRPC
state. It streams through the same SuppressionCache the workers use (one channel set-up,
one snapshot protocol), then merges the changes it saw after the snapshot into the file.

Exit status 0 once the file is in place; 2 for a key that cannot be used; on SIGTERM it
stops without writing.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from filter_server.server.suppression_cache import SuppressionCache
from filter_server.server.suppression_key import FingerprintKey, KeyUnusable

log = logging.getLogger(__name__)


def build_index_file(target: str, index_file: str, key: FingerprintKey,
                     stop: threading.Event | None = None) -> tuple[int, int] | None:
    """Snapshot `target` into `index_file`; (entries, sequence), or None if stopped."""
    stop = stop or threading.Event()
    cache = SuppressionCache(target, key=key, name="suppression-index-builder").start()
    try:
        while not stop.is_set():
            if cache.wait_ready(0.2):
                return cache.save_index(index_file)
        return None
    finally:
        cache.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m filter_server.server.suppression_snapshot TARGET INDEX_FILE "
              "KEY_FILE", file=sys.stderr)
        return 2
    target, index_file, key_file = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        key = FingerprintKey.from_file(key_file)
    except KeyUnusable as exc:
        print(f"suppression index: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    built = build_index_file(target, index_file, key, stop)
    if built is None:
        return 0
    entries, sequence = built
    log.info("suppression index of %d entries at sequence %d built in %.1fs", entries,
             sequence, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
