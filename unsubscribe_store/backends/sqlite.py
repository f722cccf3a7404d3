"""Embedded SQLite backend for local mode and single-replica development stores.

One connection, used from one dedicated thread, in WAL mode with ``synchronous=FULL`` (every
commit is fsynced before it returns, so an acknowledgement survives a crash of the process
or the machine). Writers use ``BEGIN IMMEDIATE``, which serialises them exactly like the
postgres backend's sequence lock: sequences are gapless and commit-ordered; concurrent
Unsubscribe calls are group-committed (see ``store.Store``). It is a single
file on a single disk, so it reports itself as not highly available and refuses
``durability: replicated``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from mailwarden.suppression import Reason
from unsubscribe_store import migrations
from unsubscribe_store.model import (
    Change,
    ForgetResult,
    IdempotencyConflict,
    ImportRow,
    Op,
    Readiness,
    ResubscribeResult,
    StoreMisconfigured,
    StoreUnavailable,
    Suppression,
    UnsubscribeResult,
    merge_reason,
)
from unsubscribe_store.renormalise import RENORMALISE_SOURCE, refingerprint, rekey
from unsubscribe_store.store import Store, request_fingerprint

log = logging.getLogger(__name__)
T = TypeVar("T")
READER_THREADS = 2
_SUPP_COLS = "address, scope, reason, source, first_seen, seq"
_CHANGE_COLS = "seq, op, address, scope, reason, source, at"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _ts(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# Enum look-ups by value cost a call each; a change feed turns every change into one.
_REASONS = {r.value: r for r in Reason}
_OPS = {o.value: o for o in Op}


def _suppression(row: tuple) -> Suppression:
    return Suppression(row[0], row[1], _REASONS[row[2]], row[3], _ts(row[4]), int(row[5]))


def _change(row: tuple) -> Change:
    return Change(int(row[0]), _OPS[row[1]], row[2], row[3], _REASONS[row[4]], row[5], _ts(row[6]))


class SqliteStore(Store):
    backend = "sqlite"
    highly_available = False

    def __init__(self, path: str | Path, *, durability: str = "local") -> None:
        super().__init__(durability)
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"--sqlite-path {self.path} is a directory: give the database "
                             "file (it is created if missing)")
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # Reads run on their own connections and threads (WAL lets readers and the writer
        # proceed together), so Watch, Check and snapshots never queue behind a commit.
        self._readers: ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()

    async def _run(self, fn: Callable[..., T], *args) -> T:
        if self._executor is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from None

    def _read_sync(self, query: str, params: tuple) -> list[tuple]:
        conn = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0,
                                   check_same_thread=False)
            conn.execute("PRAGMA query_only = 1")
            self._reader_local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn.execute(query, params).fetchall()

    async def _run_read(self, query: str, params: tuple = ()) -> list[tuple]:
        if self._readers is None or self._conn is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, self._read_sync, query, params)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from None

    # --- lifecycle ---------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create {self.path.parent}: "
                                   f"{exc.strerror or exc}") from None
        if self.path.is_dir():
            raise StoreMisconfigured(f"{self.path} is a directory, not an SQLite database")
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            # The first statement reads the file header: a file that is not a database
            # fails here, before anything is written to it.
            conn.execute("PRAGMA schema_version").fetchone()
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA busy_timeout = 30000")
        except sqlite3.OperationalError as exc:
            conn.close()
            raise StoreUnavailable(f"sqlite: cannot open {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreMisconfigured(f"{self.path} is not an SQLite database ({exc})") \
                from None
        self._conn = conn

    async def open(self, *, migrate: bool = True) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        if self._conn is None:
            await self._run(self._connect)
        if self._readers is None:
            self._readers = ThreadPoolExecutor(max_workers=READER_THREADS,
                                               thread_name_prefix="sqlite-read")
        if migrate:
            await self.migrate()

    async def close(self) -> None:
        await self._stop_group_commit()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
            with self._reader_lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()
            self._reader_local = threading.local()
        if self._executor is not None:
            if self._conn is not None:
                await self._run(self._conn.close)
                self._conn = None
            self._executor.shutdown(wait=True)
            self._executor = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        return self._conn

    def _migrate_sync(self) -> list[int]:
        conn = self._connection()
        applied: list[int] = []
        conn.execute(migrations.SQLITE_VERSION_TABLE)
        for version, description, statements in migrations.SQLITE:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM unsubscribe_schema_migrations WHERE version = ?",
                                (version,)).fetchone():
                    conn.execute("COMMIT")
                    continue
                for statement in statements:
                    if statement == migrations.RENORMALISE:
                        self._renormalise_sync(conn)
                    else:
                        conn.execute(statement)
                conn.execute("INSERT INTO unsubscribe_schema_migrations VALUES (?, ?, ?)",
                             (version, description, _now()))
                conn.execute("COMMIT")
                applied.append(version)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return applied

    async def migrate(self) -> list[int]:
        applied = await self._run(self._migrate_sync)
        if applied:
            self.notifier.notify()  # a data migration may have appended changes
        return applied

    def _renormalise_sync(self, conn: sqlite3.Connection) -> None:
        """Migration step RENORMALISE (see ``renormalise``), in the migration's write
        transaction: new keys are suppressed before an old key is removed, each a change."""
        plan = [(row, found) for row in conn.execute(
                    "SELECT address, scope, reason, source, first_seen "
                    "FROM unsubscribe_suppressions")
                if (found := rekey(row[0])) is not None]
        seq = conn.execute("SELECT value FROM unsubscribe_sequence").fetchone()[0] + 1
        added = moved = 0
        for (address, scope, reason, source, first_seen), found in plan:
            for key in found.keys:
                if key != address:
                    _, _, used = self._suppress(conn, seq, key, scope, Reason(reason), source,
                                                _ts(first_seen))
                    seq += used
                    added += used
            if found.moves:
                conn.execute("DELETE FROM unsubscribe_suppressions WHERE address = ? "
                             "AND scope = ?", (address, scope))
                conn.execute("INSERT INTO unsubscribe_changes VALUES "
                             "(?, 'resubscribe', ?, ?, ?, ?, ?)",
                             (seq, address, scope, reason, RENORMALISE_SOURCE, _now()))
                seq += 1
                moved += 1
        conn.execute("UPDATE unsubscribe_sequence SET value = ?", (seq - 1,))
        keys = [(key, fingerprint, address, scope, found) for key, fingerprint, address, scope
                in conn.execute("SELECT key, fingerprint, address, scope "
                                "FROM unsubscribe_idempotency_keys WHERE address IS NOT NULL")
                if (found := rekey(address)) is not None and found.moves]
        for key, fingerprint, address, scope, found in keys:
            new = found.keys[0]
            conn.execute("UPDATE unsubscribe_idempotency_keys SET address = ?, fingerprint = ? "
                         "WHERE key = ?", (new, refingerprint(fingerprint, address, new, scope)
                                           or fingerprint, key))
        log.info("re-keyed suppressions: %d moved to a new key, %d keys added", moved, added)

    # --- writes ------------------------------------------------------------------------
    def _write_sync(self, body: Callable[[sqlite3.Connection, int], tuple[T, int]]) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = conn.execute("SELECT value FROM unsubscribe_sequence").fetchone()[0]
            result, last = body(conn, value + 1)
            if last > value:
                conn.execute("UPDATE unsubscribe_sequence SET value = ?", (last,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    async def _write(self, body) -> T:
        result = await self._run(self._write_sync, body)
        self.notifier.notify()
        return result

    @staticmethod
    def _suppress(conn: sqlite3.Connection, seq: int, address: str, scope: str, reason: Reason,
                  source: str, first_seen: datetime | None = None) -> tuple[int, bool, bool]:
        now = _now()
        first = first_seen.astimezone(timezone.utc).isoformat(timespec="microseconds") \
            if first_seen else now
        cur = conn.execute(
            "INSERT INTO unsubscribe_suppressions "
            "(address, scope, reason, source, first_seen, seq) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address, scope) DO NOTHING",
            (address, scope, reason.value, source, first, seq))
        if cur.rowcount == 1:
            conn.execute("INSERT INTO unsubscribe_changes VALUES (?, 'suppress', ?, ?, ?, ?, ?)",
                         (seq, address, scope, reason.value, source, now))
            return seq, False, True
        old_reason, old_seq = conn.execute(
            "SELECT reason, seq FROM unsubscribe_suppressions WHERE address = ? AND scope = ?",
            (address, scope)).fetchone()
        escalated = merge_reason(Reason(old_reason), reason)
        if escalated is None:
            return int(old_seq), True, False
        conn.execute("UPDATE unsubscribe_suppressions SET reason = ?, seq = ? "
                     "WHERE address = ? AND scope = ?", (escalated.value, seq, address, scope))
        conn.execute("INSERT INTO unsubscribe_changes VALUES (?, 'suppress', ?, ?, ?, ?, ?)",
                     (seq, address, scope, escalated.value, source, now))
        return seq, True, True

    async def unsubscribe(self, address: str, scope: str, reason: Reason, source: str,
                          idempotency_key: str = "") -> UnsubscribeResult:
        fingerprint = request_fingerprint(address, scope, reason)

        def body(conn, seq):
            if idempotency_key:
                row = conn.execute(
                    "SELECT fingerprint, seq, already_existed FROM unsubscribe_idempotency_keys "
                    "WHERE key = ?", (idempotency_key,)).fetchone()
                if row is not None:
                    if row[0] != fingerprint:
                        raise IdempotencyConflict(
                            "idempotency key was already used for a different request")
                    return UnsubscribeResult(int(row[1]), bool(row[2]), address, scope), seq - 1
            result_seq, existed, used = self._suppress(conn, seq, address, scope, reason, source)
            if idempotency_key:
                conn.execute(
                    "INSERT INTO unsubscribe_idempotency_keys VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (idempotency_key, fingerprint, result_seq, int(existed), address, scope,
                     _now()))
            return UnsubscribeResult(result_seq, existed, address, scope), seq if used else seq - 1
        return await self._submit(body)

    def _batch_sync(self, conn: sqlite3.Connection, seq: int, bodies: list):
        outcomes: list[tuple[Any, Exception | None]] = []
        for body in bodies:
            conn.execute("SAVEPOINT one_request")
            try:
                result, last = body(conn, seq)
            except (IdempotencyConflict, sqlite3.IntegrityError) as exc:
                conn.execute("ROLLBACK TO one_request")
                conn.execute("RELEASE one_request")
                outcomes.append((None, exc))
                continue
            conn.execute("RELEASE one_request")
            seq = last + 1
            outcomes.append((result, None))
        return outcomes, seq - 1

    async def _commit_batch(self, bodies: list):
        return await self._write(lambda conn, seq: self._batch_sync(conn, seq, bodies))

    async def resubscribe(self, address: str, scope: str, source: str) -> ResubscribeResult:
        def body(conn, seq):
            row = conn.execute("SELECT reason FROM unsubscribe_suppressions "
                               "WHERE address = ? AND scope = ?", (address, scope)).fetchone()
            if row is None:
                return ResubscribeResult(seq - 1, False), seq - 1
            conn.execute("DELETE FROM unsubscribe_suppressions WHERE address = ? AND scope = ?",
                         (address, scope))
            conn.execute("INSERT INTO unsubscribe_changes VALUES (?, 'resubscribe', ?, ?, ?, ?, ?)",
                         (seq, address, scope, row[0], source, _now()))
            return ResubscribeResult(seq, True), seq
        return await self._write(body)

    async def import_rows(self, rows: Sequence[ImportRow]) -> tuple[int, int]:
        def body(conn, seq):
            inserted = existed = 0
            for row in rows:
                _, was, used = self._suppress(conn, seq, row.address, row.scope, row.reason,
                                              row.source, row.first_seen)
                existed += was
                inserted += used
                seq += used
            return (inserted, existed), seq - 1
        return await self._write(body)

    # --- reads -------------------------------------------------------------------------
    def _query(self, query: str, params: tuple = ()) -> list[tuple]:
        return self._connection().execute(query, params).fetchall()

    async def lookup(self, addresses: Sequence[str]) -> dict[str, list[Suppression]]:
        out: dict[str, list[Suppression]] = {}
        unique = list(set(addresses))
        for start in range(0, len(unique), 500):  # stay under SQLite's variable limit
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._run_read(f"SELECT {_SUPP_COLS} FROM unsubscribe_suppressions "
                                        f"WHERE address IN ({marks})", tuple(chunk))
            for row in rows:
                out.setdefault(row[0], []).append(_suppression(row))
        return out

    async def head(self) -> int:
        rows = await self._run_read("SELECT value FROM unsubscribe_sequence")
        return int(rows[0][0])

    async def changes_after(self, sequence: int, limit: int = 1000) -> list[Change]:
        rows = await self._run_read(f"SELECT {_CHANGE_COLS} FROM unsubscribe_changes "
                                    "WHERE seq > ? ORDER BY seq LIMIT ?", (sequence, limit))
        return [_change(r) for r in rows]

    async def page(self, after: tuple[str, str] | None, limit: int,
                   scope: str = "") -> list[Suppression]:
        where, params = [], []
        if scope:  # one scope: page by (scope, address), which an index covers
            where.append("scope = ?")
            params.append(scope)
            if after is not None:
                where.append("address > ?")
                params.append(after[0])
        elif after is not None:
            where.append("(address, scope) > (?, ?)")
            params += list(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._run_read(f"SELECT {_SUPP_COLS} FROM unsubscribe_suppressions "
                                    f"{clause} ORDER BY address, scope LIMIT ?",
                                    (*params, limit))
        return [_suppression(r) for r in rows]

    async def _delete_changes(self, keep_changes: int, before: datetime, limit: int) -> int:
        def body(conn: sqlite3.Connection, seq: int) -> tuple[int, int]:
            # The oldest rows first, by the primary key: one range delete per batch.
            deleted = conn.execute(
                "DELETE FROM unsubscribe_changes WHERE seq IN (SELECT seq FROM "
                "unsubscribe_changes WHERE seq <= ? AND at < ? ORDER BY seq LIMIT ?)",
                (seq - 1 - keep_changes, before.astimezone(timezone.utc).isoformat(
                    timespec="microseconds"), limit)).rowcount
            return deleted, seq - 1
        return await self._write(body)

    async def _delete_keys(self, before: datetime, limit: int) -> int:
        def body(conn: sqlite3.Connection, seq: int) -> tuple[int, int]:
            deleted = conn.execute(
                "DELETE FROM unsubscribe_idempotency_keys WHERE key IN (SELECT key FROM "
                "unsubscribe_idempotency_keys WHERE created_at < ? LIMIT ?)",
                (before.astimezone(timezone.utc).isoformat(timespec="microseconds"),
                 limit)).rowcount
            return deleted, seq - 1
        return await self._write(body)

    async def forget(self, address: str, marker: Callable[[str], str]) -> ForgetResult:
        def body(conn: sqlite3.Connection, seq: int) -> tuple[ForgetResult, int]:
            scopes = [r[0] for r in conn.execute(
                "SELECT scope FROM unsubscribe_suppressions WHERE address = ?", (address,))]
            for scope in scopes:
                conn.execute("UPDATE unsubscribe_suppressions SET address = ? "
                             "WHERE address = ? AND scope = ?", (marker(scope), address, scope))
            history = 0
            for (scope,) in conn.execute("SELECT DISTINCT scope FROM unsubscribe_changes "
                                         "WHERE address = ?", (address,)).fetchall():
                history += conn.execute("UPDATE unsubscribe_changes SET address = ? "
                                        "WHERE address = ? AND scope = ?",
                                        (marker(scope), address, scope)).rowcount
            conn.execute("DELETE FROM unsubscribe_idempotency_keys WHERE address = ?",
                         (address,))
            return ForgetResult(len(scopes), history), seq - 1
        return await self._write(body)

    async def forgotten_under_other_keys(self, prefix: str) -> int:
        rows = await self._run_read(
            "SELECT count(*) FROM unsubscribe_suppressions WHERE address LIKE '#fp:%' "
            "AND instr(address, '@') = 0 AND substr(address, 1, ?) != ?", (len(prefix), prefix))
        return int(rows[0][0])

    async def log_floor(self) -> int:
        rows = await self._run_read(
            "SELECT (SELECT min(seq) FROM unsubscribe_changes), value FROM unsubscribe_sequence")
        oldest, head = rows[0]
        return int(head) if oldest is None else int(oldest) - 1

    async def count(self) -> int:
        rows = await self._run_read("SELECT count(*) FROM unsubscribe_suppressions")
        return int(rows[0][0])

    async def readiness(self) -> Readiness:
        if self.durability == "replicated":
            return Readiness(False, "durability is replicated, but the embedded SQLite store "
                                    "is a single file on one disk: use a postgres store")
        try:
            rows = await self._run(self._query, "SELECT coalesce(max(version), 0) "
                                                "FROM unsubscribe_schema_migrations")
        except (StoreUnavailable, sqlite3.DatabaseError) as exc:
            return Readiness(False, f"sqlite: {exc}")
        if rows[0][0] < migrations.LATEST:
            return Readiness(False, "schema not migrated")
        return Readiness(True)
