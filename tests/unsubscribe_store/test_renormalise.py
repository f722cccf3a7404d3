"""Schema migration 2 re-keys suppressions stored under the old normalisation (lower() and
IDNA 2003): after the upgrade every old row still suppresses every recipient it suppressed
before — on both backends — the keys follow the new normalisation, and the change log tells
running caches about it."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import grpc

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from testkit.store import addresses_in
from unsubscribe_store import migrations
from unsubscribe_store.renormalise import legacy_domain_variants, rekey

# Rows exactly as schema version 1 stored them: the inputs were normalised with lower() and
# Python's IDNA 2003 codec (recorded input in the comment).
OLD_ROWS = [
    ("straße@example.com", "news", "unsubscribe"),   # Straße@example.com
    ("leser@strasse.de", "*", "complaint"),           # leser@straße.de (or strasse.de)
    ("ｒｅａｄｅｒ@example.com", "*", "unsubscribe"),  # full-width local part
    ("ann@example.com", "news", "bounce"),            # unaffected
    ("strasse@example.com", "news", "complaint"),     # merges with the first row's new key
    ("x@xn--ls8h.la", "*", "manual"),                 # IDNA2008 rejects it: kept as it was
]
OLD_IDEMPOTENCY = [("k1", "straße@example.com", "news", "unsubscribe")]

# Every spelling the old store suppressed for these rows (global or "news", bulk mail)
STILL_SUPPRESSED = ["Straße@example.com", "STRASSE@example.com", "leser@straße.de",
                    "leser@strasse.de", "ｒｅａｄｅｒ@example.com", "reader@example.com",
                    "ann@example.com"]


def _fingerprint(address: str, scope: str, reason: str) -> str:
    return hashlib.sha256(f"{address}\x00{scope}\x00{reason}".encode()).hexdigest()


def _seed_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(migrations.SQLITE_VERSION_TABLE)
    _, description, statements = migrations.SQLITE[0]
    for statement in statements:
        conn.execute(statement)
    conn.execute("INSERT INTO unsubscribe_schema_migrations VALUES (1, ?, '2024-01-01')",
                 (description,))
    for seq, (address, scope, reason) in enumerate(OLD_ROWS, 1):
        conn.execute("INSERT INTO unsubscribe_suppressions VALUES (?, ?, ?, 'old', "
                     "'2024-01-02T00:00:00+00:00', ?)", (address, scope, reason, seq))
        conn.execute("INSERT INTO unsubscribe_changes VALUES (?, 'suppress', ?, ?, ?, 'old', "
                     "'2024-01-02T00:00:00+00:00')", (seq, address, scope, reason))
    conn.execute("UPDATE unsubscribe_sequence SET value = ?", (len(OLD_ROWS),))
    for key, address, scope, reason in OLD_IDEMPOTENCY:
        conn.execute("INSERT INTO unsubscribe_idempotency_keys VALUES (?, ?, 1, 0, ?, ?, "
                     "'2024-01-02')", (key, _fingerprint(address, scope, reason), address, scope))
    conn.close()


def _seed_postgres(dsn: str) -> None:
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(migrations.PG_VERSION_TABLE)
        _, description, statements = migrations.POSTGRES[0]
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO unsubscribe_schema_migrations (version, description) "
                     "VALUES (1, %s)", (description,))
        for seq, (address, scope, reason) in enumerate(OLD_ROWS, 1):
            conn.execute("INSERT INTO unsubscribe_suppressions VALUES (%s, %s, %s, 'old', "
                         "'2024-01-02T00:00:00+00:00', %s)", (address, scope, reason, seq))
            conn.execute("INSERT INTO unsubscribe_changes VALUES (%s, 'suppress', %s, %s, %s, "
                         "'old', '2024-01-02T00:00:00+00:00')", (seq, address, scope, reason))
        conn.execute("UPDATE unsubscribe_sequence SET value = %s", (len(OLD_ROWS),))
        for key, address, scope, reason in OLD_IDEMPOTENCY:
            conn.execute("INSERT INTO unsubscribe_idempotency_keys (key, fingerprint, seq, "
                         "already_existed, address, scope) VALUES (%s, %s, 1, false, %s, %s)",
                         (key, _fingerprint(address, scope, reason), address, scope))


def test_rekey_rules():
    assert rekey("ann@example.com") is None
    moved = rekey("straße@example.com")
    assert moved is not None and moved.keys == ("strasse@example.com",) and moved.moves
    legacy = rekey("leser@strasse.de")
    assert legacy is not None and not legacy.moves
    assert legacy.keys == ("leser@strasse.de", "leser@xn--strae-oqa.de")
    assert rekey("x@xn--ls8h.la") is None
    assert len(legacy_domain_variants("s" * 60 + ".example")) <= 16  # bounded


def test_old_rows_still_suppress_after_the_migration(backend, start_store, store_args):
    if backend == "postgres":
        _seed_postgres(Path(store_args[store_args.index("--dsn-file") + 1]).read_text())
    else:
        _seed_sqlite(Path(store_args[store_args.index("--sqlite-path") + 1]))
    store = start_store(store_args)  # migrates on start
    stub = store.stub()
    check = stub.Check(pb.CheckRequest(addresses=STILL_SUPPRESSED, scope="news"))
    assert [r.address for r in check.suppressed] == STILL_SUPPRESSED
    # the merged row kept the stronger reason (a complaint is never bypassed)
    tx = stub.Check(pb.CheckRequest(addresses=["straße@example.com"], scope="news",
                                    mail_class=pb.TRANSACTIONAL))
    assert [r.address for r in tx.suppressed] == ["straße@example.com"]

    keys = addresses_in(backend, store_args)
    assert ("strasse@example.com", "news") in keys
    assert ("straße@example.com", "news") not in keys            # moved to its new key
    assert {("leser@strasse.de", "*"), ("leser@xn--strae-oqa.de", "*")} <= keys
    assert ("reader@example.com", "*") in keys
    assert ("x@xn--ls8h.la", "*") in keys                        # nothing lost

    # running caches learn the new keys from the change log: new keys appear before the old
    # key goes away, so a cache following along never has neither
    changes = []
    for event in stub.Watch(pb.WatchRequest(from_sequence=len(OLD_ROWS)), timeout=5):
        if event.HasField("heartbeat"):
            break
        changes.append((event.change.op, event.change.address, event.change.scope))
    assert (pb.SUPPRESS, "reader@example.com", "*") in changes
    assert (pb.SUPPRESS, "leser@xn--strae-oqa.de", "*") in changes
    removed = changes.index((pb.RESUBSCRIBE, "ｒｅａｄｅｒ@example.com", "*"))
    assert changes.index((pb.SUPPRESS, "reader@example.com", "*")) < removed

    # an idempotency key used before the upgrade still answers its retry
    retry = stub.Unsubscribe(pb.UnsubscribeRequest(address="Straße@example.com", scope="news",
                                                   reason=pb.UNSUBSCRIBE,
                                                   idempotency_key="k1"))
    assert retry.sequence == 1
    try:
        stub.Unsubscribe(pb.UnsubscribeRequest(address="other@example.com", scope="news",
                                               idempotency_key="k1"))
        raise AssertionError("a reused key with another request must be refused")
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
