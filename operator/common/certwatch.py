"""Restart on webhook certificate rotation.

kopf's webhook server reads its certificate once, at start. cert-manager renews the Secret
long before it expires and the kubelet updates the mounted files; this watcher notices and
stops the operator gracefully (SIGTERM), so the kubelet restarts it with the new
certificate. A random delay keeps the replicas, which see the new files at about the same
time, from restarting together; a graceful stop hands leadership over in well under a
second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger("mailwarden.operator.certwatch")

FILES = ("tls.crt", "tls.key")


def fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in FILES:
        try:
            digest.update((directory / name).read_bytes())
        except OSError:
            digest.update(b"missing")
        digest.update(b"\0")
    return digest.hexdigest()


def _terminate() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class CertWatcher(threading.Thread):
    def __init__(self, directory: Path, *, interval: float = 60.0, max_delay: float = 120.0,
                 on_change: Callable[[], None] = _terminate) -> None:
        super().__init__(name="certwatch", daemon=True)
        self.directory = directory
        self.interval = interval
        self.max_delay = max_delay
        self.on_change = on_change
        self.stopping = threading.Event()
        self.initial = fingerprint(directory)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            if fingerprint(self.directory) == self.initial:
                continue
            delay = random.uniform(0, self.max_delay)
            log.warning("webhook certificate in %s changed: restarting in %.0f s to load it",
                        self.directory, delay)
            if not self.stopping.wait(delay):
                self.on_change()
            return

    def stop(self) -> None:
        self.stopping.set()
