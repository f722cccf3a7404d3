"""PostgreSQL backend (psycopg 3 + psycopg_pool).

Writes are serialised on the single row of ``unsubscribe_sequence`` (taken FOR UPDATE as the
first statement of every write transaction, so there is one lock order and no deadlock).
PostgreSQL keeps a committing transaction's locks and hides its rows until the commit —
including the wait for a synchronous standby — is complete, so sequence numbers become
visible strictly in order and without gaps: a reader that has seen sequence N has seen every
change up to N. The price is one commit at a time, so concurrent Unsubscribe requests are
group-committed: those that queue up during a commit share the next transaction (a savepoint
each) and are all acknowledged when its COMMIT returns.

Every session runs with ``synchronous_commit = on``: COMMIT returns only once the WAL is
flushed locally and, when the cluster names synchronous standbys, on the standby too. A
commit whose wait for the standby was cancelled (PostgreSQL then warns that the transaction
"has already committed locally, but might not have been replicated") is reported as
StoreUnavailable, never acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

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
    StoreUnavailable,
    Suppression,
    UnsubscribeResult,
    merge_reason,
)
from unsubscribe_store.renormalise import RENORMALISE_SOURCE, refingerprint, rekey
from unsubscribe_store.store import Store, request_fingerprint

log = logging.getLogger(__name__)

CHANNEL = "mailwarden_unsubscribe"
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout,
                psycopg.errors.ReadOnlySqlTransaction)
_SUPP_COLS = "address, scope, reason, source, first_seen, seq"
_CHANGE_COLS = "seq, op, address, scope, reason, source, at"

# An Import's batch: a temporary table of this transaction (no WAL, dropped with it).
_STAGING_TABLE = """
CREATE TEMPORARY TABLE IF NOT EXISTS unsubscribe_import_staging (
    ord int NOT NULL, address text NOT NULL, scope text NOT NULL, reason text NOT NULL,
    source text NOT NULL, first_seen timestamptz) ON COMMIT DROP"""
# One row per key (a complaint wins, then the earliest row), joined to what is stored; the
# rows that write (new keys, escalations) are numbered from %(first)s in row order.
# Returns (rows written = sequences used, new keys).
_UPSERT_STAGED = """
WITH staged AS (
    SELECT DISTINCT ON (address, scope) ord, address, scope, reason, source, first_seen
    FROM unsubscribe_import_staging
    ORDER BY address, scope, (reason = 'complaint') DESC, ord),
writes AS (
    SELECT s.*, e.address IS NOT NULL AS existed,
           %(first)s - 1 + row_number() OVER (ORDER BY s.ord) AS seq
    FROM staged s LEFT JOIN unsubscribe_suppressions e USING (address, scope)
    WHERE e.address IS NULL OR (s.reason = 'complaint' AND e.reason <> 'complaint')),
inserted AS (
    INSERT INTO unsubscribe_suppressions (address, scope, reason, source, first_seen, seq)
    SELECT address, scope, reason, source, coalesce(first_seen, now()), seq
    FROM writes WHERE NOT existed),
escalated AS (
    UPDATE unsubscribe_suppressions u SET reason = w.reason, seq = w.seq
    FROM writes w WHERE w.existed AND u.address = w.address AND u.scope = w.scope),
logged AS (
    INSERT INTO unsubscribe_changes (seq, op, address, scope, reason, source)
    SELECT seq, 'suppress', address, scope, reason, source FROM writes)
SELECT count(*), count(*) FILTER (WHERE NOT existed) FROM writes"""


# Enum look-ups by value cost a call each; a change feed turns every change into one.
_REASONS = {r.value: r for r in Reason}
_OPS = {o.value: o for o in Op}


def _suppression(row: tuple) -> Suppression:
    return Suppression(row[0], row[1], _REASONS[row[2]], row[3], row[4], row[5])


def _change(row: tuple) -> Change:
    return Change(row[0], _OPS[row[1]], row[2], row[3], _REASONS[row[4]], row[5], row[6])


class PostgresStore(Store):
    backend = "postgres"
    highly_available = True  # as available as the PostgreSQL cluster behind the DSN

    def __init__(self, dsn: str, *, durability: str = "local", pool_min: int = 1,
                 pool_max: int = 10, connect_timeout: float = 10.0) -> None:
        super().__init__(durability)
        try:
            conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            # psycopg's message quotes the DSN, which may hold a password: not repeated.
            raise ValueError("the DSN is not a valid PostgreSQL connection string (use "
                             "key=value pairs, e.g. 'host=db dbname=mail user=unsub', or a "
                             "postgresql:// URI)") from None
        self._dsn = dsn  # may hold a password: never logged
        self._connect_timeout = connect_timeout
        self._pool = psycopg_pool.AsyncConnectionPool(
            dsn, min_size=pool_min, max_size=pool_max, open=False, timeout=connect_timeout,
            configure=self._configure, check=psycopg_pool.AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "application_name": "mailwarden-unsubscribe",
                    "connect_timeout": int(max(1, connect_timeout))},
            name="unsubscribe")
        self._syncrep_cancelled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._listener: asyncio.Task | None = None
        self._opened = False

    # --- connections -------------------------------------------------------------------
    async def _configure(self, conn: psycopg.AsyncConnection) -> None:
        flag: list[str] = []
        self._syncrep_cancelled[conn] = flag

        def on_notice(diag: psycopg.errors.Diagnostic) -> None:
            if "synchronous replication" in (diag.message_primary or ""):
                flag.append(diag.message_primary or "")
        conn.add_notice_handler(on_notice)
        await conn.execute("SET synchronous_commit = on")

    async def open(self, *, migrate: bool = True) -> None:
        try:
            if migrate:
                await self.migrate()
            if not self._opened:
                await self._pool.open(wait=True, timeout=self._connect_timeout)
                self._opened = True
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database unreachable: {_describe(exc)}") from None
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="unsubscribe-listen")

    async def close(self) -> None:
        await self._stop_group_commit()
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):
                pass
            self._listener = None
        if self._opened:
            await self._pool.close()
            self._opened = False

    async def _listen(self) -> None:
        """Turn NOTIFYs into wake-ups. Reconnects forever; after every (re)connect it wakes
        all watchers once, since notifications sent while it was away are gone."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, application_name="mailwarden-unsubscribe-listen",
                    connect_timeout=int(max(1, self._connect_timeout)))
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    self.notifier.notify()
                    async for _ in conn.notifies():
                        self.notifier.notify()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening whatever happened; polling covers gaps
                log.warning("change listener lost its connection (%s); reconnecting",
                            _describe(exc))
            await asyncio.sleep(1.0)

    async def migrate(self) -> list[int]:
        applied: list[int] = []
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, application_name="mailwarden-unsubscribe-migrate",
                connect_timeout=int(max(1, self._connect_timeout)))
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database unreachable: {_describe(exc)}") from None
        async with conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)",
                                   (migrations.PG_MIGRATION_LOCK,))
                await conn.execute(migrations.PG_VERSION_TABLE)
            for version, description, statements in migrations.POSTGRES:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)",
                                       (migrations.PG_MIGRATION_LOCK,))
                    cur = await conn.execute(
                        "SELECT 1 FROM unsubscribe_schema_migrations WHERE version = %s",
                        (version,))
                    if await cur.fetchone():
                        continue
                    for statement in statements:
                        if statement == migrations.RENORMALISE:
                            await self._renormalise(conn)
                        else:
                            await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO unsubscribe_schema_migrations (version, description) "
                        "VALUES (%s, %s)", (version, description))
                    applied.append(version)
                    log.info("applied schema migration %d: %s", version, description)
        return applied

    async def _renormalise(self, conn: psycopg.AsyncConnection) -> None:
        """Migration step RENORMALISE (see ``renormalise``), inside the migration's
        transaction and holding the sequence lock as every writer does: new keys are
        suppressed before an old key is removed, each a change, then watchers are notified."""
        cur = await conn.execute("SELECT value FROM unsubscribe_sequence FOR UPDATE")
        row = await cur.fetchone()
        assert row is not None, "the sequence table holds one row"
        seq = int(row[0]) + 1
        plan = []
        async with conn.cursor(name="unsubscribe_renormalise") as rows:
            await rows.execute("SELECT address, scope, reason, source, first_seen "
                               "FROM unsubscribe_suppressions")
            async for stored in rows:
                found = rekey(stored[0])
                if found is not None:
                    plan.append((stored, found))
        added = moved = 0
        for (address, scope, reason, source, first_seen), found in plan:
            for key in found.keys:
                if key != address:
                    _, _, used = await self._suppress(conn, seq, key, scope, Reason(reason),
                                                      source, first_seen)
                    seq += used
                    added += used
            if found.moves:
                await conn.execute("DELETE FROM unsubscribe_suppressions "
                                   "WHERE address = %s AND scope = %s", (address, scope))
                await conn.execute(
                    "INSERT INTO unsubscribe_changes (seq, op, address, scope, reason, source) "
                    "VALUES (%s, 'resubscribe', %s, %s, %s, %s)",
                    (seq, address, scope, reason, RENORMALISE_SOURCE))
                seq += 1
                moved += 1
        await conn.execute("UPDATE unsubscribe_sequence SET value = %s", (seq - 1,))
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(seq - 1)))
        keys = []
        async with conn.cursor(name="unsubscribe_renormalise_keys") as rows:
            await rows.execute("SELECT key, fingerprint, address, scope "
                               "FROM unsubscribe_idempotency_keys WHERE address IS NOT NULL")
            async for key, fingerprint, address, scope in rows:
                found = rekey(address)
                if found is not None and found.moves:
                    keys.append((key, fingerprint, address, scope, found.keys[0]))
        for key, fingerprint, address, scope, new in keys:
            await conn.execute(
                "UPDATE unsubscribe_idempotency_keys SET address = %s, fingerprint = %s "
                "WHERE key = %s",
                (new, refingerprint(fingerprint, address, new, scope) or fingerprint, key))
        log.info("re-keyed suppressions: %d moved to a new key, %d keys added", moved, added)

    # --- writes ------------------------------------------------------------------------
    async def _write(self, body):
        """Run ``body(conn, first_free_sequence)`` in a write transaction holding the sequence
        lock; ``body`` returns (result, last_sequence_used)."""
        try:
            async with self._pool.connection() as conn:
                flag = self._syncrep_cancelled.setdefault(conn, [])
                flag.clear()
                async with conn.transaction():
                    cur = await conn.execute(
                        "SELECT value, current_setting('synchronous_standby_names') "
                        "FROM unsubscribe_sequence FOR UPDATE")
                    row = await cur.fetchone()
                    assert row is not None, "the sequence table holds one row"
                    value, standby_names = row
                    if self.durability == "replicated" and not standby_names.strip():
                        raise StoreUnavailable(
                            "durability is replicated but synchronous_standby_names is empty")
                    result, last = await body(conn, value + 1)
                    if last > value:
                        await conn.execute("UPDATE unsubscribe_sequence SET value = %s", (last,))
                        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(last)))
                if flag:
                    raise StoreUnavailable(
                        "commit not confirmed by the synchronous standby: " + flag[0])
                return result
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database unavailable: {_describe(exc)}") from None

    @staticmethod
    async def _suppress(conn, seq: int, address: str, scope: str, reason: Reason, source: str,
                        first_seen=None) -> tuple[int, bool, bool]:
        """Upsert one suppression; returns (its sequence, already_existed, used ``seq``)."""
        cur = await conn.execute(
            "INSERT INTO unsubscribe_suppressions "
            "(address, scope, reason, source, first_seen, seq) "
            "VALUES (%s, %s, %s, %s, coalesce(%s, now()), %s) "
            "ON CONFLICT (address, scope) DO NOTHING RETURNING seq",
            (address, scope, reason.value, source, first_seen, seq))
        if await cur.fetchone():
            await conn.execute(
                "INSERT INTO unsubscribe_changes (seq, op, address, scope, reason, source) "
                "VALUES (%s, 'suppress', %s, %s, %s, %s)",
                (seq, address, scope, reason.value, source))
            return seq, False, True
        cur = await conn.execute(
            "SELECT reason, seq FROM unsubscribe_suppressions WHERE address = %s AND scope = %s",
            (address, scope))
        old_reason, old_seq = await cur.fetchone()
        escalated = merge_reason(Reason(old_reason), reason)
        if escalated is None:
            return old_seq, True, False
        await conn.execute(
            "UPDATE unsubscribe_suppressions SET reason = %s, seq = %s "
            "WHERE address = %s AND scope = %s", (escalated.value, seq, address, scope))
        await conn.execute(
            "INSERT INTO unsubscribe_changes (seq, op, address, scope, reason, source) "
            "VALUES (%s, 'suppress', %s, %s, %s, %s)",
            (seq, address, scope, escalated.value, source))
        return seq, True, True

    async def unsubscribe(self, address: str, scope: str, reason: Reason, source: str,
                          idempotency_key: str = "") -> UnsubscribeResult:
        if not idempotency_key:
            # Fast path for replays: a committed row is already durable, nothing to write.
            found = await self._existing(address, scope)
            if found is not None and merge_reason(found.reason, reason) is None:
                return UnsubscribeResult(found.sequence, True, address, scope)
        fingerprint = request_fingerprint(address, scope, reason)

        async def body(conn, seq):
            if idempotency_key:
                cur = await conn.execute(
                    "SELECT fingerprint, seq, already_existed FROM unsubscribe_idempotency_keys "
                    "WHERE key = %s", (idempotency_key,))
                row = await cur.fetchone()
                if row is not None:
                    if row[0] != fingerprint:
                        raise IdempotencyConflict(
                            "idempotency key was already used for a different request")
                    return UnsubscribeResult(row[1], row[2], address, scope), seq - 1
            result_seq, existed, used = await self._suppress(conn, seq, address, scope, reason,
                                                             source)
            if idempotency_key:
                await conn.execute(
                    "INSERT INTO unsubscribe_idempotency_keys "
                    "(key, fingerprint, seq, already_existed, address, scope) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (idempotency_key, fingerprint, result_seq, existed, address, scope))
            return UnsubscribeResult(result_seq, existed, address, scope), seq if used else seq - 1
        return await self._submit(body)

    async def _commit_batch(self, bodies):
        """One transaction for a group of queued writes, a savepoint each."""
        async def run_all(conn, seq):
            outcomes: list[tuple[Any, Exception | None]] = []
            for body in bodies:
                try:
                    async with conn.transaction():  # a savepoint
                        result, last = await body(conn, seq)
                    seq = last + 1
                    outcomes.append((result, None))
                except IdempotencyConflict as exc:
                    outcomes.append((None, exc))
                except _UNAVAILABLE:
                    raise  # the connection is gone: the whole batch failed
                except psycopg.Error as exc:  # this request only (its savepoint rolled back)
                    log.error("write failed: %s", _describe(exc))
                    outcomes.append((None, exc))
            return outcomes, seq - 1
        return await self._write(run_all)

    async def resubscribe(self, address: str, scope: str, source: str) -> ResubscribeResult:
        async def body(conn, seq):
            cur = await conn.execute(
                "DELETE FROM unsubscribe_suppressions WHERE address = %s AND scope = %s "
                "RETURNING reason", (address, scope))
            row = await cur.fetchone()
            if row is None:
                return ResubscribeResult(seq - 1, False), seq - 1
            await conn.execute(
                "INSERT INTO unsubscribe_changes (seq, op, address, scope, reason, source) "
                "VALUES (%s, 'resubscribe', %s, %s, %s, %s)", (seq, address, scope, row[0], source))
            return ResubscribeResult(seq, True), seq
        return await self._write(body)

    # Rows an Import sends to one set-based upsert (PostgreSQL plans one statement for the
    # batch; per-row statements cost a round trip each).
    import_batch = 20_000

    async def import_rows(self, rows: Sequence[ImportRow]) -> tuple[int, int]:
        """COPY the rows into a temporary staging table, then one statement upserts them
        all: new keys are inserted, a complaint onto an existing non-complaint escalates
        it, everything else is a replay. Each insert or escalation takes the next sequence
        in row order and is one change, as single unsubscribes are."""
        async def body(conn, seq):
            await conn.execute(_STAGING_TABLE)
            async with conn.cursor() as cur:
                async with cur.copy("COPY unsubscribe_import_staging "
                                    "(ord, address, scope, reason, source, first_seen) "
                                    "FROM STDIN") as copy:
                    for ord_, row in enumerate(rows):
                        await copy.write_row((ord_, row.address, row.scope, row.reason.value,
                                              row.source, row.first_seen))
                await cur.execute(_UPSERT_STAGED, {"first": seq})
                done = await cur.fetchone()
            written, new = done
            return (written, len(rows) - new), seq + written - 1
        return await self._write(body)

    # --- reads -------------------------------------------------------------------------
    async def _read(self, query: str, params: tuple = ()) -> list[tuple]:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchall()
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"database unavailable: {_describe(exc)}") from None

    async def _existing(self, address: str, scope: str) -> Suppression | None:
        rows = await self._read(f"SELECT {_SUPP_COLS} FROM unsubscribe_suppressions "
                                "WHERE address = %s AND scope = %s", (address, scope))
        return _suppression(rows[0]) if rows else None

    async def lookup(self, addresses: Sequence[str]) -> dict[str, list[Suppression]]:
        out: dict[str, list[Suppression]] = {}
        if not addresses:
            return out
        rows = await self._read(f"SELECT {_SUPP_COLS} FROM unsubscribe_suppressions "
                                "WHERE address = ANY(%s)", (list(set(addresses)),))
        for row in rows:
            out.setdefault(row[0], []).append(_suppression(row))
        return out

    async def head(self) -> int:
        rows = await self._read("SELECT value FROM unsubscribe_sequence")
        return int(rows[0][0])

    async def changes_after(self, sequence: int, limit: int = 1000) -> list[Change]:
        rows = await self._read(f"SELECT {_CHANGE_COLS} FROM unsubscribe_changes WHERE seq > %s "
                                "ORDER BY seq LIMIT %s", (sequence, limit))
        return [_change(r) for r in rows]

    async def page(self, after: tuple[str, str] | None, limit: int,
                   scope: str = "") -> list[Suppression]:
        where: list[str] = []
        params: list[Any] = []
        if scope:  # one scope: page by (scope, address), which an index covers
            where.append("scope = %s")
            params.append(scope)
            if after is not None:
                where.append("address > %s")
                params.append(after[0])
        elif after is not None:
            where.append("(address, scope) > (%s, %s)")
            params += list(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(f"SELECT {_SUPP_COLS} FROM unsubscribe_suppressions {clause} "
                                "ORDER BY address, scope LIMIT %s", (*params, limit))
        return [_suppression(r) for r in rows]

    async def _delete_changes(self, keep_changes: int, before: datetime, limit: int) -> int:
        async def body(conn, seq: int) -> tuple[int, int]:
            cur = await conn.execute(
                "DELETE FROM unsubscribe_changes WHERE seq IN (SELECT seq FROM "
                "unsubscribe_changes WHERE seq <= %s AND at < %s ORDER BY seq LIMIT %s)",
                (seq - 1 - keep_changes, before, limit))
            return cur.rowcount, seq - 1
        return await self._write(body)

    async def _delete_keys(self, before: datetime, limit: int) -> int:
        async def body(conn, seq: int) -> tuple[int, int]:
            cur = await conn.execute(
                "DELETE FROM unsubscribe_idempotency_keys WHERE key IN (SELECT key FROM "
                "unsubscribe_idempotency_keys WHERE created_at < %s LIMIT %s)", (before, limit))
            return cur.rowcount, seq - 1
        return await self._write(body)

    async def forget(self, address: str, marker: Callable[[str], str]) -> ForgetResult:
        async def body(conn, seq: int) -> tuple[ForgetResult, int]:
            cur = await conn.execute("SELECT scope FROM unsubscribe_suppressions "
                                     "WHERE address = %s", (address,))
            scopes = [r[0] for r in await cur.fetchall()]
            for scope in scopes:
                await conn.execute("UPDATE unsubscribe_suppressions SET address = %s "
                                   "WHERE address = %s AND scope = %s",
                                   (marker(scope), address, scope))
            cur = await conn.execute("SELECT DISTINCT scope FROM unsubscribe_changes "
                                     "WHERE address = %s", (address,))
            history = 0
            for (scope,) in await cur.fetchall():
                done = await conn.execute("UPDATE unsubscribe_changes SET address = %s "
                                          "WHERE address = %s AND scope = %s",
                                          (marker(scope), address, scope))
                history += done.rowcount
            await conn.execute("DELETE FROM unsubscribe_idempotency_keys WHERE address = %s",
                               (address,))
            return ForgetResult(len(scopes), history), seq - 1
        return await self._write(body)

    async def forgotten_under_other_keys(self, prefix: str) -> int:
        rows = await self._read(
            "SELECT count(*) FROM unsubscribe_suppressions WHERE address LIKE '#fp:%%' "
            "AND strpos(address, '@') = 0 AND left(address, %s) <> %s", (len(prefix), prefix))
        return int(rows[0][0])

    async def log_floor(self) -> int:
        rows = await self._read(
            "SELECT (SELECT min(seq) FROM unsubscribe_changes), value FROM unsubscribe_sequence")
        oldest, head = rows[0]
        return int(head) if oldest is None else int(oldest) - 1

    async def count(self) -> int:
        rows = await self._read("SELECT count(*) FROM unsubscribe_suppressions")
        return int(rows[0][0])

    async def readiness(self) -> Readiness:
        try:
            rows = await self._read(
                "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'), "
                "(SELECT count(*) FROM pg_stat_replication "
                "WHERE sync_state IN ('sync', 'quorum')), "
                "(SELECT count(*) FROM pg_stat_replication WHERE sync_state IS NULL), "
                "(SELECT coalesce(max(version), 0) FROM unsubscribe_schema_migrations), "
                "(SELECT coalesce(extract(epoch FROM max(replay_lag)), 0) "
                "FROM pg_stat_replication)")
        except StoreUnavailable as exc:
            return Readiness(False, str(exc))
        except psycopg.errors.UndefinedTable:
            return Readiness(False, "schema not migrated (run `mailwarden unsubscribe-server "
                                    "--migrate-only`)")
        in_recovery, standby_names, in_sync, hidden, version, lag = rows[0]
        if in_recovery:
            return Readiness(False, "connected to a read-only standby, not the primary")
        if version < migrations.LATEST:
            return Readiness(False, f"schema at version {version}, this server needs "
                                    f"{migrations.LATEST} (run `mailwarden "
                                    "unsubscribe-server --migrate-only`)")
        if self.durability == "replicated":
            if not standby_names.strip():
                return Readiness(False, "durability is replicated but the database has no "
                                        "synchronous_standby_names: commits are not replicated")
            if in_sync == 0:
                if hidden:
                    return Readiness(False, "cannot see replication state: grant the store's "
                                            "database role pg_monitor (pg_stat_replication)")
                return Readiness(False, "durability is replicated but no standby is in sync "
                                        "(pg_stat_replication has no sync_state = 'sync')")
        return Readiness(True, "", int(in_sync), float(lag))


def _describe(exc: BaseException) -> str:
    """A one-line description of a database error without connection secrets."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
