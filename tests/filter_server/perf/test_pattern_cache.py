"""Compiled pattern databases shared across processes ($MAILWARDEN_PATTERN_CACHE_DIR): a
database read back matches exactly what a fresh compile matches, a damaged file costs a
compile and nothing else, and a multi-worker server shares them through a private directory
it removes when it stops (real `mailwarden serve --workers 2` processes)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from filter_server import patterns
from testkit.filter import HAM, SPAM, Server, mini_policy, write_policy

PATTERNS = [r"(?i)\bviagra\b", r"\bfree\W+(?:\w+\W+){0,2}money\b", r"^https?://\d+\.", "é+"]
TEXTS = [b"buy VIAGRA now", b"free  extra money", b"http://10.1.2.3/", "caf\u00e9".encode(),
         b"nothing here"]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "hs-cache"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv(patterns.CACHE_DIR_ENV, str(directory))
    monkeypatch.setattr(patterns, "_kept", type(patterns._kept)())
    return directory


def _matches(db: patterns.TargetDatabase) -> list[list[int]]:
    out = []
    for text in TEXTS:
        fired: list[int] = []
        db.scan(text, fired)
        out.append(sorted(fired))
    return out


def test_a_database_read_back_matches_like_a_fresh_compile(cache_dir: Path,
                                                           monkeypatch) -> None:
    rules = [patterns.PatternRule(i * 10, p) for i, p in enumerate(PATTERNS)]
    fresh = patterns.TargetDatabase(rules, line_mode=True)
    assert len(list(cache_dir.glob("*.hsdb"))) == 1
    expected = _matches(fresh)
    assert expected == [[0], [10], [20], [30], []]

    patterns._kept.clear()   # as in another process: only the file is left
    compiles: list[int] = []
    real = patterns._compile
    monkeypatch.setattr(patterns, "_compile",
                        lambda p, f: compiles.append(len(p)) or real(p, f))
    reread = patterns.TargetDatabase(rules, line_mode=True)
    assert compiles == []
    assert _matches(reread) == expected


def test_a_damaged_file_is_compiled_again(cache_dir: Path) -> None:
    rules = [patterns.PatternRule(i, p) for i, p in enumerate(PATTERNS)]
    patterns.TargetDatabase(rules, line_mode=False)
    (path,) = cache_dir.glob("*.hsdb")
    path.write_bytes(b"not a hyperscan database")
    patterns._kept.clear()
    db = patterns.TargetDatabase(rules, line_mode=False)
    assert _matches(db) == [[0], [1], [2], [3], []]
    assert path.read_bytes() != b"not a hyperscan database"   # replaced by a good one


def test_workers_share_the_supervisors_compile_through_a_private_directory(
        tmp_path: Path) -> None:
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = Server(tmp_path, policy_dir, ["--drain-seconds", "0"], 2, {"TMPDIR": str(tmp)})
    try:
        server.wait_serving()
        (shared,) = tmp.glob("mailwarden-patterns-*")
        assert oct(shared.stat().st_mode & 0o777) == oct(0o700)
        # one database per target group of the policy (Subject, body, uri, sender)
        assert len(list(shared.glob("*.hsdb"))) == 4
        assert server.classify(SPAM).action != server.classify(HAM).action
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        assert not shared.exists()
    finally:
        server.kill()
