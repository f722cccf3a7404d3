"""Bad input to the filter's commands gives one clear line and exit code, never a traceback
and never a late failure (issue 20, items 10 and the filter's part of 15/16). Each runs the
real `mailwarden` command in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from testkit.filter import mini_policy, write_policy


def mailwarden(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailwarden.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_policy_digest_of_a_from_of_500_parentheses(tmp_path: Path) -> None:
    """It printed a RecursionError traceback; the filter answered INTERNAL."""
    message = tmp_path / "parens.eml"
    message.write_bytes(b"From: " + b"(" * 500 + b"\r\nSubject: hi\r\n\r\nhello\r\n")
    result = mailwarden("policy", "digest", str(message))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sha256:") and "Traceback" not in result.stderr


def test_classify_refuses_a_deadline_that_is_not_positive(tmp_path: Path) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(b"Subject: hi\r\n\r\nhello\r\n")
    for deadline in ("-1", "0", "nan"):
        result = mailwarden("classify", "--target", "127.0.0.1:9", "--deadline", deadline,
                            str(message))
        assert result.returncode == 2, (deadline, result.stderr)
        assert result.stderr.startswith("mailwarden classify: --deadline must be a positive "
                                        "number of seconds"), result.stderr


def test_serve_refuses_a_port_file_in_a_missing_directory(tmp_path: Path) -> None:
    """It started listening, then died with a FileNotFoundError traceback."""
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    started = time.monotonic()
    result = mailwarden("serve", "--policy-dir", str(policy_dir), "--host", "127.0.0.1",
                        "--grpc-port", "0", "--metrics-port", "0", "--workers", "1",
                        "--port-file", str(tmp_path / "missing" / "ports.json"))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"mailwarden serve: --port-file: directory {tmp_path / 'missing'}"
                             " does not exist\n")
    assert time.monotonic() - started < 20


def test_serve_refuses_a_suppression_tls_dir_it_cannot_use(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    base = ("serve", "--policy-dir", str(policy_dir), "--host", "127.0.0.1",
            "--grpc-port", "0", "--metrics-port", "0", "--workers", "1")
    missing = tmp_path / "no-such-dir"
    for extra, message in (
            (("--suppression-store-tls-dir", str(tmp_path)),
             "--suppression-store-tls-dir needs --suppression-store"),
            (("--suppression-store", "store:50061", "--suppression-store-tls-dir",
              str(missing)), f"--suppression-store-tls-dir: {missing} is not a directory")):
        result = mailwarden(*base, *extra)
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"mailwarden serve: {message}\n"


def test_train_checks_its_output_before_training(tmp_path: Path) -> None:
    """It trained first (seconds to minutes) and failed when writing the model. The output
    is checked first, so its error wins over the (missing) training data's."""
    out = tmp_path / "missing" / "model.json.gz"
    result = mailwarden("train", "--ham", str(tmp_path / "no-ham"), "--spam",
                        str(tmp_path / "no-spam"), "-o", str(out))
    assert result.returncode == 2
    assert result.stderr == (f"mailwarden train: -o {out}: directory {out.parent} does not "
                             "exist\n")
    result = mailwarden("train", "--ham", str(tmp_path), "--spam", str(tmp_path), "-o",
                        str(tmp_path))
    assert result.returncode == 2 and result.stderr.endswith(": is a directory\n")
