"""`mailwarden local --once` end to end: model (trained or from the cache), policy directory,
the unsubscribe store, 3 replica processes, the demo through the balancing client, a
one-click unsubscribe reaching Classify, clean stop."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

from mailwarden_local.corpus import DEFAULT_CORPUS
from testkit.dns import KnotServer, Zone


def test_local_once(tmp_path: Path) -> None:
    # Sender authentication resolves through a Knot server that knows no sender (as DNS
    # for the corpus' 2002 domains would), never through this machine's resolver.
    with KnotServer(tmp_path / "knot", Zone()) as knot:
        result = subprocess.run(
            [sys.executable, "-m", "mailwarden.cli", "local", "--once", "--samples", "4",
             "--dns-server", knot.address],
            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
            cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "replicas: 3 SERVING" in out
    assert "Classifying 4 spam and 4 ham messages" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+(spam|ham)\s+[A-Z]", line)]
    assert len(rows) == 8 and not any("FAILED" in row for row in rows)
    assert "every replica served: yes" in out
    assert re.search(r"3 replicas, policy hash [0-9a-f]{16};", out)
    # the one-click unsubscribe becomes a suppressed recipient in Classify
    assert "Classify before: suppressed nobody (SUPPRESSION_FRESH)" in out
    assert "GET  the link -> 200" in out and "POST List-Unsubscribe=One-Click -> 200" in out
    assert re.search(r"Classify after \d+ ms: suppressed \['reader@example.com'\] "
                     r"\(SUPPRESSION_FRESH\)", out)
    assert "stopped 3 replicas and the unsubscribe store" in out
    # The replicas and the store are gone: their ports no longer answer.
    ports = re.findall(r"filter-\d 127\.0\.0\.1:(\d+)", out) + \
        re.findall(r"unsubscribe store: 127\.0\.0\.1:(\d+)", out)
    assert len(ports) == 4
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0


def test_local_without_corpus_says_how_to_get_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden.cli", "local", "--once", "--corpus",
         str(tmp_path / "no-corpus")], capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "SpamAssassin corpus is not available" in result.stderr
    assert "scripts/bootstrap.sh" in result.stderr
    assert "Traceback" not in result.stderr
    assert DEFAULT_CORPUS.name == "corpus"
