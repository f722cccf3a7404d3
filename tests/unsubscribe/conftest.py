"""Fixtures: one real PostgreSQL primary for the session (a fresh database per test), real
`mailwarden unsubscribe-server` processes, and a `backend` parameter so the behaviour suite
runs against both the postgres and the embedded SQLite store."""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path

import pytest

from filter_server.unsubscribe.tokens import KeyRing, generate_key
from tests.pgcluster import PgCluster, PgUnavailable
from tests.unsubscribe.procs import StoreProcess

RESUBSCRIBE_TOKEN = "resubscribe-credential-for-tests-" + uuid.uuid4().hex
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster():
    try:
        cluster = PgCluster(fsync=True)
    except PgUnavailable as exc:
        pytest.fail(f"{exc} — the suite needs a real PostgreSQL")
    cluster.start()
    yield cluster
    cluster.close()


@pytest.fixture
def pg_dsn(pg_cluster) -> str:
    return pg_cluster.create_database(f"t{os.getpid()}_{next(_counter)}")


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory) -> tuple[Path, KeyRing, KeyRing]:
    """A key directory with a current and a previous key; returns (dir, ring, old-only ring)."""
    directory = tmp_path_factory.mktemp("signing-keys")
    current, previous = generate_key(), generate_key()
    (directory / "current").write_text(current + "\n")
    (directory / "previous").write_text(previous + "\n")
    return directory, KeyRing.from_secrets(current, [previous]), KeyRing.from_secrets(previous)


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def store_args(backend, request, tmp_path) -> list[str]:
    if backend == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        dsn_file = tmp_path / "dsn"
        dsn_file.write_text(dsn)
        return ["--store", "postgres", "--dsn-file", str(dsn_file)]
    return ["--store", "sqlite", "--sqlite-path", str(tmp_path / "store.db")]


@pytest.fixture
def start_store(tmp_path, signing_keys):
    """Factory: start_store(store_args, **kw) -> a started StoreProcess, stopped at teardown."""
    started: list[StoreProcess] = []
    key_dir = signing_keys[0]

    def start(store_args: list[str], *, name: str | None = None, extra_args: list[str] = (),
              wait_serving: bool = True) -> StoreProcess:
        resub = tmp_path / "resubscribe-token"
        resub.write_text(RESUBSCRIBE_TOKEN)
        proc = StoreProcess(tmp_path, store_args, name=name or f"store{len(started)}",
                            extra_args=["--signing-key-dir", str(key_dir),
                                        "--resubscribe-token-file", str(resub), *extra_args])
        started.append(proc)
        return proc.start(wait_serving=wait_serving)

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def store(start_store, store_args) -> StoreProcess:
    return start_store(store_args)


def count_rows(backend: str, store_args: list[str], table: str) -> int:
    """Read the store's database directly (not through the server under test)."""
    if backend == "postgres":
        import psycopg
        dsn = Path(store_args[store_args.index("--dsn-file") + 1]).read_text()
        with psycopg.connect(dsn) as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    import sqlite3
    path = store_args[store_args.index("--sqlite-path") + 1]
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def addresses_in(backend: str, store_args: list[str]) -> set[tuple[str, str]]:
    if backend == "postgres":
        import psycopg
        dsn = Path(store_args[store_args.index("--dsn-file") + 1]).read_text()
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT address, scope FROM unsubscribe_suppressions").fetchall()
    else:
        import sqlite3
        path = store_args[store_args.index("--sqlite-path") + 1]
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT address, scope FROM unsubscribe_suppressions").fetchall()
    return {(a, s) for a, s in rows}
