"""The unsubscribe store: durable suppressions keyed by (address, scope), the RFC 8058
one-click endpoint, and the in-memory SuppressionCache that filter pods keep in sync through
the store's Watch stream.

Modules, one job each: ``addresses`` (normalisation), ``model`` (records and the
suppression rule), ``tokens`` (one-click token signing), ``migrations``, ``pg_store`` /
``sqlite_store`` (backends behind ``store.Store``), ``rows`` (CSV/JSONL import/export),
``service`` (gRPC servicer), ``oneclick`` (HTTP endpoint), ``server`` (the process),
``cache`` (the client-side SuppressionCache). Importing this package imports nothing heavy.
"""
