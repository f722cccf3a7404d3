"""The unsubscribe store process: reads its configuration (DSN, signing keys, admin
credential, TLS) from the `mailwarden unsubscribe-server` flags, files and environment, applies
migrations (`--migrate-only`) or runs `UnsubscribeServer` until SIGTERM.

Configuration errors are one line on stderr and exit status 2; an unreachable database for
`--migrate-only`, or a port that cannot be bound, exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mailwarden import wire
from mailwarden.tokens import load_keyring


def _read_secret_file(path: str, what: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"mailwarden unsubscribe-server: cannot read {what} file {path}: "
                         f"{exc.strerror or exc}") from None
    if not value:
        raise SystemExit(f"mailwarden unsubscribe-server: {what} file {path} is empty")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the store as `args` (the parsed `mailwarden unsubscribe-server` flags) say."""
    import asyncio
    import logging

    from mailwarden.tls import TlsConfigError, check_tls_dir
    from mailwarden.tokens import MIN_MAX_AGE_DAYS, SigningKeyError
    from unsubscribe_store.access import AccessPolicy
    from unsubscribe_store.backends import open_store
    from unsubscribe_store.http_guard import raise_descriptor_limit
    from unsubscribe_store.model import StoreMisconfigured, StoreUnavailable
    from unsubscribe_store.server import ServerConfig, UnsubscribeServer, split_address

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").disabled = True
    # The pool warns on every failed reconnect attempt; the server logs each change of
    # readiness (with the reason) instead, which says the same once.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    err = "mailwarden unsubscribe-server: "
    dsn = ""
    if args.store == "postgres":
        if args.dsn_file:
            dsn = _read_secret_file(args.dsn_file, "DSN")
        else:
            dsn = args.dsn or os.environ.get(wire.STORE_DSN_ENV, "")
        if not dsn:
            print(err + f"--store postgres needs --dsn-file FILE (or ${wire.STORE_DSN_ENV})",
                  file=sys.stderr)
            return 2
    if args.token_max_age_days and args.token_max_age_days < MIN_MAX_AGE_DAYS:
        print(err + f"--token-max-age-days must be 0 (never) or at least {MIN_MAX_AGE_DAYS} "
              "(CASL)", file=sys.stderr)
        return 2
    for name in ("grpc_address", "http_address") + (("metrics_address",)
                                                     if args.metrics_address else ()):
        try:
            split_address(getattr(args, name))
        except ValueError as exc:
            print(err + str(exc), file=sys.stderr)
            return 2
    try:
        store = open_store(args.store, dsn=dsn, sqlite_path=args.sqlite_path,
                           durability=args.durability)
    except ValueError as exc:
        where = f" (from {args.dsn_file})" if args.store == "postgres" and args.dsn_file else ""
        print(err + str(exc) + where, file=sys.stderr)
        return 2

    if args.migrate_only:
        async def migrate() -> list[int]:
            try:
                if args.store == "sqlite":
                    await store.open(migrate=True)
                    return []
                return await store.migrate()
            finally:
                await store.close()
        try:
            applied = asyncio.run(migrate())
        except StoreMisconfigured as exc:
            print(err + str(exc), file=sys.stderr)
            return 2
        except StoreUnavailable as exc:
            print(err + str(exc), file=sys.stderr)
            return 1
        print(f"schema up to date (applied: {', '.join(map(str, applied)) or 'nothing'})")
        return 0

    keys = None
    if not args.no_one_click:
        try:
            keys = load_keyring(key_dir=args.signing_key_dir, key_file=args.signing_key_file,
                                previous_files=args.previous_signing_key_file)
        except SigningKeyError as exc:
            print(err + f"{exc}; or pass --no-one-click", file=sys.stderr)
            return 2
    admin_token = None
    if args.admin_token_file:
        admin_token = _read_secret_file(args.admin_token_file, "admin token").encode()
    else:
        for name in (wire.ADMIN_TOKEN_ENV, wire.RESUBSCRIBE_TOKEN_ENV):
            if os.environ.get(name, "").strip():
                admin_token = os.environ[name].strip().encode()
                break
    if args.require_client_cert and args.tls_dir is None:
        print(err + "--require-client-cert needs --tls-dir", file=sys.stderr)
        return 2
    if args.admin_client and not args.require_client_cert:
        print(err + "--admin-client names client certificates: it needs --tls-dir and "
              "--require-client-cert", file=sys.stderr)
        return 2
    if args.tls_dir is not None:
        try:
            check_tls_dir(args.tls_dir, args.require_client_cert)
        except TlsConfigError as exc:
            print(err + f"--tls-dir: {exc}", file=sys.stderr)
            return 2
    if args.max_concurrent_snapshots < 1 or not args.watch_send_timeout > 0:
        print(err + "--max-concurrent-snapshots must be at least 1 and --watch-send-timeout "
              "positive", file=sys.stderr)
        return 2
    if not (args.http_header_timeout > 0 and args.http_body_timeout > 0
            and args.oneclick_answer_seconds > 0) or args.http_max_connections < 0:
        print(err + "--http-header-timeout, --http-body-timeout and --oneclick-answer-seconds "
              "must be positive, "
              "--http-max-connections 0 (automatic) or more", file=sys.stderr)
        return 2
    fingerprint_key = None
    if args.fingerprint_key_file is not None:
        from mailwarden.fingerprints import FingerprintKey, KeyUnusable
        try:
            fingerprint_key = FingerprintKey.from_file(args.fingerprint_key_file)
        except KeyUnusable as exc:
            print(err + f"--fingerprint-key-file: {exc}", file=sys.stderr)
            return 2
    if args.fingerprint_refresh_changes < 1:
        print(err + "--fingerprint-refresh-changes must be at least 1", file=sys.stderr)
        return 2
    if args.compact_every < 0 or args.retain_changes < 0 or args.retain_changes_days < 0 \
            or args.retain_idempotency_days < 0:
        print(err + "--compact-every, --retain-changes, --retain-changes-days and "
              "--retain-idempotency-days cannot be negative", file=sys.stderr)
        return 2
    raise_descriptor_limit()
    config = ServerConfig(
        grpc_address=args.grpc_address, http_address=args.http_address,
        metrics_address=args.metrics_address, keys=keys,
        token_max_age_days=args.token_max_age_days, migrate=not args.no_migrate,
        readiness_interval=args.readiness_interval, drain_seconds=args.drain_seconds,
        grace_seconds=args.grace_seconds, ports_file=args.ports_file or "",
        max_concurrent_snapshots=args.max_concurrent_snapshots,
        watch_send_timeout_seconds=args.watch_send_timeout,
        http_header_timeout=args.http_header_timeout, http_body_timeout=args.http_body_timeout,
        oneclick_answer_seconds=args.oneclick_answer_seconds,
        http_max_connections=args.http_max_connections, tls_dir=args.tls_dir,
        require_client_cert=args.require_client_cert, fingerprint_key=fingerprint_key,
        fingerprint_dir=args.fingerprint_dir,
        fingerprint_refresh_changes=args.fingerprint_refresh_changes,
        compact_seconds=args.compact_every, retain_changes=args.retain_changes,
        retain_changes_days=args.retain_changes_days,
        retain_idempotency_days=args.retain_idempotency_days)
    server = UnsubscribeServer(store, config,
                               access=AccessPolicy.of(admin_token, args.admin_client))
    try:
        asyncio.run(server.run())
    except OSError as exc:
        print(err + f"cannot listen: {exc}", file=sys.stderr)
        return 1
    except StoreMisconfigured as exc:
        print(err + str(exc), file=sys.stderr)
        return 2
    return 0


