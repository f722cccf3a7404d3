"""The unsubscribe store pod: durable suppressions keyed by (address, scope), their change
stream (`Watch`, what filter pods keep their caches by), and the RFC 8058 one-click
endpoint.

Modules, one job each, lowest first: ``model`` (records), ``migrations`` (schema),
``metrics``; ``store`` (the storage interface) and ``backends/`` (PostgreSQL, SQLite, and
``open_store``); ``rows`` (CSV/JSONL import/export); ``service`` (the gRPC servicer);
``oneclick`` (the HTTP endpoint); ``server`` (the process: listeners, readiness, drain);
``main`` (configuration from flags, files and environment). Addresses, tokens and the
suppression rule are the public contract's (``mailwarden``). Importing this package
imports nothing heavy.
"""
