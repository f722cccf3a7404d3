"""A rotated webhook certificate makes the operator restart to load it."""

from __future__ import annotations

import threading
from pathlib import Path

from mailwarden_operator.common.certwatch import CertWatcher, fingerprint


def test_a_changed_certificate_triggers_one_restart(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("cert-1")
    (tmp_path / "tls.key").write_text("key-1")
    fired = threading.Event()
    watcher = CertWatcher(tmp_path, interval=0.05, max_delay=0, on_change=fired.set)
    watcher.start()
    try:
        assert not fired.wait(0.3), "restarted although nothing changed"
        (tmp_path / "tls.crt").write_text("cert-2")
        assert fired.wait(5)
    finally:
        watcher.stop()
        watcher.join(5)
    assert not watcher.is_alive()


def test_fingerprint_covers_certificate_and_key(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("c")
    before = fingerprint(tmp_path)
    (tmp_path / "tls.key").write_text("k")
    assert fingerprint(tmp_path) != before
