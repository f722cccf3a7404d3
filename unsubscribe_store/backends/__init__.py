"""The storage backends behind `store.Store`: PostgreSQL (`postgres`, highly available with a
replicated database) and embedded SQLite (`sqlite`, one node), and `open_store`, which picks
one. A backend's driver is imported only when that backend is opened, so the SQLite store
runs without psycopg."""

from __future__ import annotations

from unsubscribe_store.store import Store


def open_store(kind: str, *, dsn: str = "", sqlite_path: str = "", durability: str = "local",
               pool_max: int = 10) -> Store:
    """Build (not yet open) a store of ``kind`` "postgres" or "sqlite"."""
    if kind == "postgres":
        if not dsn:
            raise ValueError("the postgres store needs a DSN (--dsn-file or $MAILWARDEN_STORE_DSN)")
        from unsubscribe_store.backends.postgres import PostgresStore
        return PostgresStore(dsn, durability=durability, pool_max=pool_max)
    if kind == "sqlite":
        if not sqlite_path:
            raise ValueError("the sqlite store needs a database path (--sqlite-path)")
        from unsubscribe_store.backends.sqlite import SqliteStore
        return SqliteStore(sqlite_path, durability=durability)
    raise ValueError(f"unknown store {kind!r} (postgres or sqlite)")
