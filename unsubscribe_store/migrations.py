"""Schema migrations for both backends. Each migration runs once, in its own transaction,
recorded in ``unsubscribe_schema_migrations``; applying them again changes nothing, and
concurrent starters (several replicas rolling out at once) serialise on an advisory lock.
Append new migrations; never edit one that has shipped.

A step is an SQL statement, or ``RENORMALISE``: the data migration of ``renormalise`` (re-keying
suppressions when address normalisation changes), which each backend runs in Python inside
the migration's transaction, holding the sequence lock, recording every re-keyed row in the
change log so running caches follow."""

from __future__ import annotations

RENORMALISE = "-- data: re-key suppressions by the current address normalisation"
_RENORMALISE_DESCRIPTION = ("re-key addresses: UTS #46 / IDNA2008 domains, NFKC and case "
                            "folding, quoted and forward-path forms (issue 20)")

# The counter row serialises writers (see pg_store): sequences are assigned in commit order
# and without gaps, which is what lets a Watch consumer resume from "the last sequence I
# applied" and miss nothing.
POSTGRES: list[tuple[int, str, list[str]]] = [
    (1, "suppressions, change log, sequence counter, idempotency keys", [
        """CREATE TABLE IF NOT EXISTS unsubscribe_suppressions (
             address    text        NOT NULL,
             scope      text        NOT NULL,
             reason     text        NOT NULL
                        CHECK (reason IN ('unsubscribe', 'complaint', 'bounce', 'manual')),
             source     text        NOT NULL DEFAULT '',
             first_seen timestamptz NOT NULL DEFAULT now(),
             seq        bigint      NOT NULL,
             PRIMARY KEY (address, scope))""",
        """CREATE INDEX IF NOT EXISTS unsubscribe_suppressions_scope
             ON unsubscribe_suppressions (scope)""",
        """CREATE TABLE IF NOT EXISTS unsubscribe_changes (
             seq     bigint      PRIMARY KEY,
             op      text        NOT NULL CHECK (op IN ('suppress', 'resubscribe')),
             address text        NOT NULL,
             scope   text        NOT NULL,
             reason  text        NOT NULL,
             source  text        NOT NULL DEFAULT '',
             at      timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE IF NOT EXISTS unsubscribe_sequence (
             id    boolean PRIMARY KEY DEFAULT true CHECK (id),
             value bigint  NOT NULL)""",
        "INSERT INTO unsubscribe_sequence (id, value) VALUES (true, 0) ON CONFLICT DO NOTHING",
        """CREATE TABLE IF NOT EXISTS unsubscribe_idempotency_keys (
             key             text        PRIMARY KEY,
             fingerprint     text        NOT NULL,
             seq             bigint,
             already_existed boolean,
             address         text,
             scope           text,
             created_at      timestamptz NOT NULL DEFAULT now())""",
    ]),
    (2, _RENORMALISE_DESCRIPTION, [RENORMALISE]),
    # Snapshots and exports read page by page in (address, scope) order (the primary key);
    # an export of one scope pages through (scope, address), which the old index on scope
    # alone could only sort anew for every page.
    (3, "index suppressions by (scope, address) for paged exports", [
        """CREATE INDEX IF NOT EXISTS unsubscribe_suppressions_scope_address
             ON unsubscribe_suppressions (scope, address)""",
        "DROP INDEX IF EXISTS unsubscribe_suppressions_scope",
    ]),
]

SQLITE: list[tuple[int, str, list[str]]] = [
    (1, "suppressions, change log, sequence counter, idempotency keys", [
        """CREATE TABLE IF NOT EXISTS unsubscribe_suppressions (
             address    TEXT    NOT NULL,
             scope      TEXT    NOT NULL,
             reason     TEXT    NOT NULL
                        CHECK (reason IN ('unsubscribe', 'complaint', 'bounce', 'manual')),
             source     TEXT    NOT NULL DEFAULT '',
             first_seen TEXT    NOT NULL,
             seq        INTEGER NOT NULL,
             PRIMARY KEY (address, scope)) WITHOUT ROWID""",
        """CREATE INDEX IF NOT EXISTS unsubscribe_suppressions_scope
             ON unsubscribe_suppressions (scope)""",
        """CREATE TABLE IF NOT EXISTS unsubscribe_changes (
             seq     INTEGER PRIMARY KEY,
             op      TEXT    NOT NULL CHECK (op IN ('suppress', 'resubscribe')),
             address TEXT    NOT NULL,
             scope   TEXT    NOT NULL,
             reason  TEXT    NOT NULL,
             source  TEXT    NOT NULL DEFAULT '',
             at      TEXT    NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS unsubscribe_sequence (
             id    INTEGER PRIMARY KEY CHECK (id = 1),
             value INTEGER NOT NULL)""",
        "INSERT OR IGNORE INTO unsubscribe_sequence (id, value) VALUES (1, 0)",
        """CREATE TABLE IF NOT EXISTS unsubscribe_idempotency_keys (
             key             TEXT PRIMARY KEY,
             fingerprint     TEXT NOT NULL,
             seq             INTEGER,
             already_existed INTEGER,
             address         TEXT,
             scope           TEXT,
             created_at      TEXT NOT NULL)""",
    ]),
    (2, _RENORMALISE_DESCRIPTION, [RENORMALISE]),
    (3, "index suppressions by (scope, address) for paged exports", [
        """CREATE INDEX IF NOT EXISTS unsubscribe_suppressions_scope_address
             ON unsubscribe_suppressions (scope, address)""",
        "DROP INDEX IF EXISTS unsubscribe_suppressions_scope",
    ]),
]

LATEST = POSTGRES[-1][0]
assert LATEST == SQLITE[-1][0], "both backends must be at the same schema version"

# Arbitrary constant for pg_advisory_xact_lock: "mwunsub" in ASCII.
PG_MIGRATION_LOCK = 0x6D77756E737562

PG_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS unsubscribe_schema_migrations (
    version integer PRIMARY KEY, description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())"""
SQLITE_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS unsubscribe_schema_migrations (
    version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"""
