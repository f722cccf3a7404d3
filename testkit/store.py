"""Unsubscribe store processes for tests and benchmarks: the real `mailwarden
unsubscribe-server` command, in its own process group, on loopback ephemeral ports; and the
fixtures built on them: one real PostgreSQL primary for the session (a fresh database per
test), real store processes, and a `backend` parameter so a behaviour suite runs against both
the postgres and the embedded SQLite store."""

from __future__ import annotations

import itertools
import os
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from mailwarden.tokens import KeyRing, generate_key
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from testkit.pg import PgCluster, PgUnavailable
from testkit.processes import ServerProcess, health_status, mailwarden_argv

REPO = Path(__file__).resolve().parents[1]


class StoreProcess(ServerProcess):
    """One `mailwarden unsubscribe-server`. ``start()`` binds port 0 the first time and the
    same ports on a restart, so clients (and caches) reconnect to the same address."""

    def __init__(self, workdir: Path, store_args: list[str], *, env: dict | None = None,
                 extra_args: Sequence[str] = (), name: str = "store") -> None:
        self.workdir = Path(workdir)
        super().__init__(name, [], log_path=self.workdir / f"{name}.log",
                         port_file=self.workdir / f"{name}.ports",
                         env={**os.environ, **(env or {})}, cwd=REPO)
        self.store_args = list(store_args)
        self.extra_args = list(extra_args)
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self._channel: grpc.Channel | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, *, wait_serving: bool = True, timeout: float = 60.0) -> StoreProcess:
        assert self.port_file is not None
        self.argv = mailwarden_argv(
            "unsubscribe-server", *self.store_args,
            "--grpc-address", f"127.0.0.1:{self.grpc_port}",
            "--http-address", f"127.0.0.1:{self.http_port}",
            "--metrics-address", "127.0.0.1:0", "--ports-file", str(self.port_file),
            "--readiness-interval", "0.5", "--drain-seconds", "0", "--grace-seconds", "2",
            *self.extra_args)
        super().start()
        ports = self.wait_ports(timeout)
        self.grpc_port, self.http_port = ports["grpc"], ports["http"]
        self.metrics_port = ports.get("metrics", 0)
        if wait_serving:
            self.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout)
        return self

    def health(self) -> int:
        """The overall health status (a ServingStatus value), -1 when the check failed."""
        name = health_status(self.target, "", timeout=5)
        try:
            return health_pb2.HealthCheckResponse.ServingStatus.Value(name)
        except ValueError:
            return -1

    def wait_health(self, status: int, timeout: float = 60.0) -> None:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        self.wait_until(lambda: self.health() == status, what=f"health {name}",
                        timeout=timeout, interval=0.1)

    def stub(self) -> pb_grpc.UnsubscribeStoreStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return pb_grpc.UnsubscribeStoreStub(self._channel)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.alive():
            self.kill()

    def terminate(self, timeout: float = 30.0) -> int:
        return self.stop(timeout) or 0

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.terminate(timeout=10)


# --- fixtures -----------------------------------------------------------------------------
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


# --- big stores, fast -----------------------------------------------------------------------
def _seed_rows(count: int, start: int = 0):
    for i in range(start, start + count):
        yield (f"subscriber{i:08d}.{'x' * 12}@example-{i % 97}.com",
               "*" if i % 5 == 0 else f"list-{i % 11}", "unsubscribe", "seed",
               "2024-01-01T00:00:00+00:00", i + 1)


def seed_sqlite(path: Path, count: int) -> None:
    """A migrated SQLite store file holding `count` suppressions (written directly in one
    transaction, so 300 k rows take seconds rather than the minutes Import would)."""
    import asyncio

    from unsubscribe_store.backends.sqlite import SqliteStore

    async def migrate() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()
    asyncio.run(migrate())
    import sqlite3
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO unsubscribe_suppressions VALUES (?, ?, ?, ?, ?, ?)",
                     _seed_rows(count))
    conn.executemany("INSERT INTO unsubscribe_changes VALUES (?, 'suppress', ?, ?, ?, ?, ?)",
                     ((seq, a, s, r, src, at) for a, s, r, src, at, seq in _seed_rows(count)))
    conn.execute("UPDATE unsubscribe_sequence SET value = ?", (count,))
    conn.execute("COMMIT")
    conn.close()


def seed_postgres(dsn: str, count: int) -> None:
    """The same for a PostgreSQL database (COPY)."""
    import asyncio

    import psycopg

    from unsubscribe_store.backends.postgres import PostgresStore

    async def migrate() -> None:
        store = PostgresStore(dsn)
        await store.migrate()
    asyncio.run(migrate())
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY unsubscribe_suppressions (address, scope, reason, source, "
                          "first_seen, seq) FROM STDIN") as copy:
                for row in _seed_rows(count):
                    copy.write_row(row)
            with cur.copy("COPY unsubscribe_changes (seq, op, address, scope, reason, source, "
                          "at) FROM STDIN") as copy:
                for a, s, r, src, at, seq in _seed_rows(count):
                    copy.write_row((seq, "suppress", a, s, r, src, at))
            cur.execute("UPDATE unsubscribe_sequence SET value = %s", (count,))
