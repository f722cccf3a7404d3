"""The `mailwarden token` and `mailwarden unsubscribe(-server)` commands as a user runs them:
clear errors (never a traceback), idempotent migrations, import checked before writing."""

from __future__ import annotations

import subprocess
import sys

from mailwarden.tokens import KeyRing, verify_token
from testkit.store import REPO, RESUBSCRIBE_TOKEN, count_rows

ADMIN_ENV = {"MAILWARDEN_ADMIN_TOKEN": RESUBSCRIBE_TOKEN}


def mw(*args: str, env: dict | None = None, stdin: bytes | None = None):
    import os
    return subprocess.run([sys.executable, "-m", "mailwarden.cli", *args], cwd=REPO,
                          capture_output=True, input=stdin, timeout=120,
                          env={**os.environ, **(env or {})})


def test_token_rotate_keeps_old_links_working(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "current").write_text(mw("token", "generate-key").stdout.decode())
    before = mw("token", "mint", "--address", "a@example.com", "--scope", "n",
                "--signing-key-dir", str(keys)).stdout.decode().strip()
    rotated = mw("token", "rotate", "--signing-key-dir", str(keys))
    assert rotated.returncode == 0, rotated.stderr
    assert b"previous keys still verifying: 1" in rotated.stdout
    assert (keys / "current").stat().st_mode & 0o077 == 0
    ok = mw("token", "verify", before, "--signing-key-dir", str(keys))
    assert ok.returncode == 0 and b"address=a@example.com" in ok.stdout
    too_short = mw("token", "rotate", "--signing-key-dir", str(keys), "--keep-days", "30")
    assert too_short.returncode == 2 and b"at least 60 days" in too_short.stderr
    missing = mw("token", "rotate", "--signing-key-dir", str(tmp_path / "nope"))
    assert missing.returncode == 2 and b"Traceback" not in missing.stderr
    other = keys.parent / "other"
    other.mkdir()
    (other / "current").write_text(mw("token", "generate-key").stdout.decode())
    unknown = mw("token", "verify", before, "--signing-key-dir", str(other))
    assert unknown.returncode == 1 and b"not configured" in unknown.stderr


def test_token_commands(tmp_path):
    key = mw("token", "generate-key").stdout.decode().strip()
    assert len(key) >= 43
    env = {"MAILWARDEN_SIGNING_KEY": key}
    token = mw("token", "mint", "--address", "Ann@Example.com", "--scope", "news",
               env=env).stdout.decode().strip()
    assert verify_token(KeyRing.from_secrets(key), token).address == "ann@example.com"
    out = mw("token", "headers", "--address", "ann@example.com", "--scope", "news",
             "--base-url", "https://u.example.com", env=env).stdout.decode()
    assert f"List-Unsubscribe: <https://u.example.com/u/{token}>" in out
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in out
    ok = mw("token", "verify", token, env=env)
    assert ok.returncode == 0 and b"address=ann@example.com scope=news" in ok.stdout
    bad = mw("token", "verify", token[:-2] + "AA", env=env)
    assert bad.returncode == 1 and b"invalid token" in bad.stderr
    for args, message in [
        (("token", "mint", "--address", "x@example.com", "--scope", "n"), b"no signing key"),
        (("token", "mint", "--address", "nope", "--scope", "n", "--signing-key-file",
          str(tmp_path / "missing")), b"cannot read signing key file"),
        (("token", "headers", "--address", "a@b.example", "--scope", "n", "--base-url",
          "http://u.example.com"), b"requires https"),
    ]:
        result = mw(*args, env={"MAILWARDEN_SIGNING_KEY": ""} if b"no signing" in message
                    else env)
        assert result.returncode == 2 and message in result.stderr
        assert b"Traceback" not in result.stderr
    assert key.encode() not in mw("token", "mint", "--address", "a@b.example", "--scope", "n",
                                  env=env).stderr


def test_server_argument_errors_are_clear(tmp_path):
    for args, message in [
        (("--store", "postgres"), b"needs --dsn-file"),
        (("--no-one-click", "--grpc-address", "nonsense"), b"must be HOST:PORT"),
        (("--no-one-click", "--token-max-age-days", "30"), b"at least 60"),
        (("--sqlite-path", str(tmp_path / "db"), "--grpc-address", "127.0.0.1:0"),
         b"no signing key"),
    ]:
        result = mw("unsubscribe-server", *args, env={"MAILWARDEN_SIGNING_KEY": ""})
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and b"Traceback" not in result.stderr


def test_migrations_are_idempotent(pg_dsn, tmp_path):
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(pg_dsn)
    args = ("unsubscribe-server", "--store", "postgres", "--dsn-file", str(dsn_file),
            "--migrate-only")
    first, second = mw(*args), mw(*args)
    assert first.returncode == 0 and b"applied: 1, 2, 3" in first.stdout
    assert second.returncode == 0 and b"applied: nothing" in second.stdout
    unreachable = tmp_path / "bad-dsn"
    unreachable.write_text("host=127.0.0.1 port=1 user=x password=s3cret connect_timeout=2")
    failed = mw("unsubscribe-server", "--store", "postgres", "--dsn-file", str(unreachable),
                "--migrate-only")
    assert failed.returncode == 1 and b"database unreachable" in failed.stderr
    assert b"s3cret" not in failed.stderr and b"Traceback" not in failed.stderr


def test_import_is_checked_before_anything_is_written(store, backend, store_args, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("email,list\nann@example.com,news\nbob@example.com,\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("address\nann@example.com\nnot an address\ncarol@example.com\n")
    result = mw("unsubscribe", "--target", store.target, "import", str(bad))
    assert result.returncode == 1
    assert b"bad.csv:3:" in result.stderr and b"nothing imported" in result.stderr
    assert count_rows(backend, store_args, "unsubscribe_suppressions") == 0
    result = mw("unsubscribe", "--target", store.target, "import", str(good), env=ADMIN_ENV)
    assert result.returncode == 0, result.stderr
    assert b"imported 2 rows: 2 new" in result.stdout
    exported = mw("unsubscribe", "--target", store.target, "export", "--format", "jsonl",
                  env=ADMIN_ENV)
    assert exported.stdout.count(b"\n") == 2
    check = mw("unsubscribe", "--target", store.target, "check", "ANN@example.com",
               "bob@example.com", "zed@example.com", "--scope", "news")
    assert check.stdout.decode().splitlines() == [
        "ANN@example.com\tsuppressed\tnews:unsubscribe",
        "bob@example.com\tsuppressed\t*:unsubscribe"]
    down = mw("unsubscribe", "--target", "127.0.0.1:1", "--timeout", "2", "status")
    assert down.returncode == 1 and b"UNAVAILABLE" in down.stderr


def _server(*args: str, env: dict | None = None):
    """Run `unsubscribe-server` that must refuse to start: it may not hang, so 30 s."""
    import os
    return subprocess.run([sys.executable, "-m", "mailwarden.cli", "unsubscribe-server",
                           "--grpc-address", "127.0.0.1:0", "--http-address", "127.0.0.1:0",
                           "--metrics-address", "", *args], cwd=REPO, capture_output=True,
                          timeout=30, env={**os.environ, "MAILWARDEN_SIGNING_KEY": "k" * 43,
                                           **(env or {})})


def test_server_refuses_what_it_cannot_serve_with_one_line(tmp_path):
    """Issue 20, item 15: a port out of range, a file that is not a database, a directory,
    an invalid DSN — one clear line and exit status 2, never a traceback or a server that
    says "connecting" forever."""
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("these are my notes, not a database\n" * 100)
    bad_dsn = tmp_path / "dsn"
    bad_dsn.write_text("host=db user=app password=s3cret-pw sslmode")
    cases = [
        (("--http-address", ":99999", "--sqlite-path", str(tmp_path / "a.db")),
         b"port 99999 is out of range"),
        (("--grpc-address", "127.0.0.1:70000", "--sqlite-path", str(tmp_path / "a.db")),
         b"port 70000 is out of range"),
        (("--sqlite-path", str(not_a_db)), b"is not an SQLite database"),
        (("--sqlite-path", str(tmp_path)), b"is a directory"),
        (("--store", "postgres", "--dsn-file", str(bad_dsn)),
         b"is not a valid PostgreSQL connection string"),
    ]
    for args, message in cases:
        result = _server(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in result.stderr, (args, result.stderr[-2000:])
        assert b"Traceback" not in result.stderr and b"s3cret-pw" not in result.stderr
    assert not_a_db.read_text().startswith("these are my notes")  # untouched


def test_export_into_a_missing_directory_is_a_clear_error(start_store, tmp_path):
    store = start_store(["--store", "sqlite", "--sqlite-path", str(tmp_path / "s.db")])
    target = tmp_path / "no" / "such" / "dir" / "out.csv"
    result = mw("unsubscribe", "--target", store.target, "export", "-o", str(target))
    assert result.returncode == 2, result.stderr
    assert b"cannot write" in result.stderr and b"Traceback" not in result.stderr
    good = tmp_path / "out.csv"
    assert mw("unsubscribe", "--target", store.target, "export", "-o", str(good),
              env=ADMIN_ENV).returncode == 0
    assert good.read_text().startswith("address,scope")


def test_a_store_that_never_connected_says_why_and_is_not_highly_available(start_store,
                                                                           tmp_path):
    dsn = tmp_path / "dsn"
    dsn.write_text("host=127.0.0.1 port=1 dbname=x user=x password=s3cret connect_timeout=1")
    store = start_store(["--store", "postgres", "--dsn-file", str(dsn)], wait_serving=False)
    from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
    from testkit.filter import wait_for
    wait_for(lambda: "unreachable" in store.stub().GetStatus(pb.GetStatusRequest()).reason,
             30, "the reason the store is not ready")
    status = store.stub().GetStatus(pb.GetStatusRequest())
    assert not status.ready and not status.highly_available
    assert "s3cret" not in status.reason
    printed = mw("unsubscribe", "--target", store.target, "status")
    assert printed.returncode == 1
    assert b"highly available: no" in printed.stdout and b"unreachable" in printed.stdout
