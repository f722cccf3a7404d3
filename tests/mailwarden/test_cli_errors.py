"""Issue 20 item 15, the filter-side commands: a bad path or value is one clear line and
exit status 2, found before any work is done — never a traceback, a hang, or an error after
minutes of training."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def mw(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mailwarden.cli", *args], cwd=REPO,
                          input=stdin, capture_output=True, timeout=120,
                          env={**os.environ, "MAILWARDEN_TARGET": ""})


def test_classify_refuses_a_deadline_that_is_not_positive():
    for value in ("-1", "0"):
        result = mw("classify", "--target", "127.0.0.1:1", "--deadline", value, "-",
                    stdin=b"Subject: x\n\nx\n")
        assert result.returncode == 2, result.stderr
        assert b"--deadline must be positive" in result.stderr
        assert b"Traceback" not in result.stderr


def test_train_checks_the_output_path_before_training(tmp_path):
    for label in ("ham", "spam"):
        (tmp_path / label).mkdir()
        for i in range(3):
            (tmp_path / label / f"{i}").write_bytes(b"Subject: %d\n\nbody %d\n" % (i, i))
    started = time.monotonic()
    result = mw("train", "--ham", str(tmp_path / "ham"), "--spam", str(tmp_path / "spam"),
                "-o", str(tmp_path / "no" / "such" / "model.json.gz"))
    assert result.returncode == 2, result.stderr
    assert b"directory" in result.stderr and b"Traceback" not in result.stderr
    assert b"trained on" not in result.stderr  # refused before training
    assert time.monotonic() - started < 60


def test_serve_refuses_a_port_file_in_a_missing_directory(tmp_path):
    result = mw("serve", "--policy-dir", str(tmp_path), "--grpc-port", "0",
                "--port-file", str(tmp_path / "missing" / "ports.json"))
    assert result.returncode == 2, result.stderr
    assert b"--port-file" in result.stderr and b"Traceback" not in result.stderr
