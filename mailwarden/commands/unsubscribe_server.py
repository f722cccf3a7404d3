"""`mailwarden unsubscribe-server`: run the unsubscribe store (gRPC + one-click HTTP).

The flags are defined here; the store's own bootstrap is `unsubscribe_store.main`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mailwarden import wire
from mailwarden.commands.token import add_key_arguments

EXTRA = "store"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "unsubscribe-server", help="run the unsubscribe store (gRPC + one-click HTTP)",
        description="Serve mailwarden.unsubscribe.v1 over gRPC and the RFC 8058 one-click "
        "endpoint over HTTP. Migrations are applied before the store reports Ready.")
    p.add_argument("--store", choices=("postgres", "sqlite"), default="sqlite",
                   help="storage backend (default: sqlite, the embedded single-node store)")
    p.add_argument("--dsn-file", metavar="FILE",
                   help=f"file holding the PostgreSQL DSN (or set ${wire.STORE_DSN_ENV}); "
                        "multi-host DSNs with target_session_attrs=read-write follow a failover")
    p.add_argument("--dsn", help="PostgreSQL DSN on the command line (visible in the process "
                                 "list: prefer --dsn-file)")
    p.add_argument("--sqlite-path", metavar="FILE", default="mailwarden-unsubscribe.db",
                   help="SQLite database file (default: %(default)s)")
    p.add_argument("--durability", choices=("local", "replicated"), default="local",
                   help="replicated: refuse to report Ready (and to write) unless PostgreSQL "
                        "confirms a synchronous standby (default: %(default)s)")
    p.add_argument("--grpc-address", default=f"0.0.0.0:{wire.STORE_GRPC_PORT}", metavar="HOST:PORT",
                   help="gRPC listen address (default: %(default)s; port 0 = any free port)")
    p.add_argument("--http-address", default=f"0.0.0.0:{wire.STORE_HTTP_PORT}", metavar="HOST:PORT",
                   help="one-click HTTP listen address (default: %(default)s)")
    p.add_argument("--metrics-address", default=f"0.0.0.0:{wire.STORE_METRICS_PORT}",
                   metavar="HOST:PORT",
                   help="Prometheus metrics listen address, '' to disable (default: %(default)s)")
    add_key_arguments(p)
    p.add_argument("--no-one-click", action="store_true",
                   help="run without signing keys: no one-click endpoint (probes only)")
    p.add_argument("--token-max-age-days", type=int, default=0,
                   help="one-click tokens older than this count as expired (still honoured "
                        "when authentic, counted apart); 0 = never (default). CASL requires "
                        "at least 60")
    p.add_argument("--admin-token-file", "--resubscribe-token-file", dest="admin_token_file",
                   metavar="FILE",
                   help=f"admin credential: Import, Export and Resubscribe calls must present "
                        f"it as a bearer token, unless their client certificate is named by "
                        f"--admin-client (or set ${wire.ADMIN_TOKEN_ENV}). With neither, "
                        f"those methods are disabled")
    p.add_argument("--admin-client", action="append", default=[], metavar="NAME",
                   help="client certificate name (CN or DNS SAN) allowed to call Import, "
                        "Export and Resubscribe (repeatable; needs --require-client-cert)")
    p.add_argument("--tls-dir", type=Path, metavar="DIR",
                   help="serve gRPC over TLS from DIR (tls.crt, tls.key; ca.crt for client "
                        "certificates), reloaded when the files change")
    p.add_argument("--require-client-cert", action="store_true",
                   help="mutual TLS: refuse gRPC clients without a certificate signed by "
                        "DIR/ca.crt (needs --tls-dir)")
    p.add_argument("--fingerprint-key-file", type=Path, metavar="FILE",
                   help="the suppression fingerprint key the filter pods use (the same "
                        "Secret as their --suppression-key-file; raw, or hex text of at least "
                        "32 bytes): the store then builds and serves the fingerprint snapshot "
                        "a new filter pod starts from in one transfer (docs/unsubscribe.md). "
                        "Without it, filter pods stream a Watch snapshot")
    p.add_argument("--fingerprint-dir", type=Path, metavar="DIR",
                   help="where the fingerprint snapshot file is kept (8 bytes per "
                        "suppression; default: a temporary directory)")
    p.add_argument("--fingerprint-refresh-changes", type=int, default=10_000, metavar="N",
                   help="merge the change log into the fingerprint snapshot when a filter pod "
                        "asks for it and it is N or more changes behind (default: %(default)s)")
    p.add_argument("--compact-every", type=float, default=3600.0, metavar="SECONDS",
                   help="how often the change log and idempotency keys are compacted "
                        "(0: never; default: %(default)s)")
    p.add_argument("--retain-changes-days", type=float, default=7.0, metavar="DAYS",
                   help="keep change-log rows at least this long (default: %(default)s); a "
                        "filter pod that resumes from an older sequence takes a snapshot")
    p.add_argument("--retain-changes", type=int, default=100_000, metavar="N",
                   help="and keep at least the last N changes whatever their age (default: "
                        "%(default)s)")
    p.add_argument("--retain-idempotency-days", type=float, default=7.0, metavar="DAYS",
                   help="keep idempotency keys this long: a retry with the same key within "
                        "it gets the original answer (default: %(default)s)")
    p.add_argument("--no-migrate", action="store_true",
                   help="do not apply schema migrations (they must have been applied already)")
    p.add_argument("--migrate-only", action="store_true",
                   help="apply schema migrations and exit")
    p.add_argument("--readiness-interval", type=float, default=2.0, metavar="SECONDS",
                   help="how often readiness (replication state) is re-checked")
    p.add_argument("--drain-seconds", type=float, default=2.0,
                   help="after SIGTERM, report NOT_SERVING this long before closing listeners")
    p.add_argument("--grace-seconds", type=float, default=10.0,
                   help="after draining, in-flight calls get this long to finish")
    p.add_argument("--max-concurrent-snapshots", type=int, default=32, metavar="N",
                   help="Watch snapshots and exports streamed at once; more wait their turn "
                        "(each holds one page of 1000 rows in memory; default: %(default)s)")
    p.add_argument("--watch-send-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="end a Watch or Export stream whose consumer has not read for this "
                        "long (RESOURCE_EXHAUSTED; a Watch resumes on reconnect; default: "
                        "%(default)s)")
    p.add_argument("--http-header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close an HTTP connection that has not sent a complete request head "
                        "this long after opening (or after its last response; default: "
                        "%(default)s)")
    p.add_argument("--http-body-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="answer 408 to a one-click POST whose body has not arrived this long "
                        "after its head (default: %(default)s)")
    p.add_argument("--oneclick-answer-seconds", type=float, default=3.0, metavar="SECONDS",
                   help="answer 503 (Retry-After) to a one-click POST whose unsubscribe is not "
                        "committed this long after its body arrived, e.g. while the database "
                        "fails over; nothing is acknowledged that was not committed, and a "
                        "retry of the same link is idempotent (default: %(default)s)")
    p.add_argument("--http-max-connections", type=int, default=0, metavar="N",
                   help="HTTP connections at once; over it the connection silent longest is "
                        "closed. 0 (default): half of the open-file limit left after 256, at "
                        "most 1024 (the limit is raised to its hard limit at start)")
    p.add_argument("--ports-file", metavar="FILE",
                   help="write the bound ports as JSON here once listening (for port 0)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)



def run(args: argparse.Namespace) -> int:
    from unsubscribe_store.main import run as run_store

    return run_store(args)
