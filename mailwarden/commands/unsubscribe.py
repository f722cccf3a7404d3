"""`mailwarden unsubscribe ACTION` (add, check, resubscribe, import, export, watch, status):
a client of a running unsubscribe store."""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mailwarden import wire
from mailwarden.bearer import bearer_metadata

ENV_TARGET = "MAILWARDEN_UNSUBSCRIBE_TARGET"
ENV_TLS_DIR = "MAILWARDEN_UNSUBSCRIBE_TLS_DIR"
DEFAULT_TARGET = f"127.0.0.1:{wire.STORE_GRPC_PORT}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unsubscribe", help="talk to a running unsubscribe store",
                       description="Client of mailwarden.unsubscribe.v1 (see "
                       "docs/unsubscribe.md).")
    p.add_argument("--target", default=os.environ.get(ENV_TARGET, DEFAULT_TARGET),
                   metavar="HOST:PORT", help=f"store gRPC address (default: ${ENV_TARGET} or "
                   f"{DEFAULT_TARGET})")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per call in seconds")
    p.add_argument("--tls-dir", default=os.environ.get(ENV_TLS_DIR) or None, metavar="DIR",
                   help=f"connect over TLS: DIR/ca.crt verifies the store, DIR/tls.crt and "
                        f"DIR/tls.key (when present) are the client certificate (default: "
                        f"${ENV_TLS_DIR}; without it, plaintext)")
    p.add_argument("--admin-credential-file", metavar="FILE",
                   help=f"admin credential for import, export and resubscribe (or set "
                        f"${wire.ADMIN_TOKEN_ENV}); not needed with a client certificate the "
                        f"store names in --admin-client")
    a = p.add_subparsers(dest="unsubscribe_command", required=True, metavar="ACTION")

    add = a.add_parser("add", help="record a suppression")
    add.add_argument("address")
    add.add_argument("--scope", required=True, help="list name, or '*' for all mail")
    add.add_argument("--reason", default="unsubscribe",
                     choices=("unsubscribe", "complaint", "bounce", "manual"))
    add.add_argument("--source", default="cli")
    add.add_argument("--idempotency-key", default="")
    add.set_defaults(func=run_add)

    check = a.add_parser("check", help="print which addresses are suppressed")
    check.add_argument("addresses", nargs="+")
    check.add_argument("--scope", default="", help="list of the mail ('' = no list)")
    check.add_argument("--mail-class", default="bulk", choices=("bulk", "transactional"))
    check.set_defaults(func=run_check)

    resub = a.add_parser("resubscribe", help="remove a suppression (needs the admin "
                         "credential, or an admin client certificate)")
    resub.add_argument("address")
    resub.add_argument("--scope", required=True)
    resub.add_argument("--source", required=True, help="who/what authorised it")
    resub.add_argument("--credential-file", metavar="FILE",
                       help="the admin credential (same as --admin-credential-file)")
    resub.set_defaults(func=run_resubscribe)

    imp = a.add_parser("import", help="bulk import suppressions from CSV or JSONL")
    imp.add_argument("file", help="file to import, '-' for stdin")
    imp.add_argument("--format", choices=("csv", "jsonl"), help="default: from the extension")
    imp.add_argument("--scope", default="*", help="scope for rows without one (default: *)")
    imp.add_argument("--reason", default="unsubscribe",
                     choices=("unsubscribe", "complaint", "bounce", "manual"))
    imp.add_argument("--source", default="import")
    imp.add_argument("--skip-invalid", action="store_true",
                     help="import the valid rows and list the invalid ones (default: check "
                          "the whole file first and import nothing if a row is invalid)")
    imp.set_defaults(func=run_import)

    exp = a.add_parser("export", help="export suppressions as CSV or JSONL")
    exp.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    exp.add_argument("--scope", default="", help="only this scope (default: all)")
    exp.add_argument("--output", "-o", default="-", help="file, '-' for stdout")
    exp.set_defaults(func=run_export)

    watch = a.add_parser("watch", help="print the change stream")
    watch.add_argument("--from-sequence", type=int, default=0)
    watch.set_defaults(func=run_watch)

    status = a.add_parser("status", help="print the store's readiness and facts")
    status.set_defaults(func=run_status)


def _stub(args: argparse.Namespace):
    import grpc

    from mailwarden.keepalive import keepalive_options
    from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
    # A `watch` or an export only reads: keepalive notices a dead connection in seconds.
    options = keepalive_options()
    if args.tls_dir:
        from mailwarden.tls import TlsConfigError, channel_credentials
        try:
            credentials = channel_credentials(Path(args.tls_dir))
        except TlsConfigError as exc:
            print(f"mailwarden unsubscribe: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        channel = grpc.secure_channel(args.target, credentials, options)
    else:
        channel = grpc.insecure_channel(args.target, options)
    return channel, pb_grpc.UnsubscribeStoreStub(channel)


def _admin_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The admin credential as call metadata; none when not configured (a client certificate
    the store names in --admin-client is enough)."""
    path = getattr(args, "credential_file", None) or args.admin_credential_file
    credential = _read_credential(path) if path else ""
    for name in (wire.ADMIN_TOKEN_ENV, wire.RESUBSCRIBE_TOKEN_ENV):
        credential = credential or os.environ.get(name, "").strip()
    return bearer_metadata(credential)


def _rpc_error(exc) -> int:
    print(f"mailwarden unsubscribe: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1


def _reason(name: str) -> int:
    from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
    return pb.Reason.Value(name.upper())


def run_add(args: argparse.Namespace) -> int:
    import grpc

    from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
    channel, stub = _stub(args)
    with channel:
        try:
            r = stub.Unsubscribe(pb.UnsubscribeRequest(
                address=args.address, scope=args.scope, reason=_reason(args.reason),
                source=args.source, idempotency_key=args.idempotency_key), timeout=args.timeout)
        except grpc.RpcError as exc:
            return _rpc_error(exc)
    state = "already suppressed" if r.already_existed else "suppressed"
    print(f"{r.address} {state} in scope {r.scope} (sequence {r.sequence})")
    return 0


def run_check(args: argparse.Namespace) -> int:
    import grpc

    from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
    channel, stub = _stub(args)
    with channel:
        try:
            r = stub.Check(pb.CheckRequest(addresses=args.addresses, scope=args.scope,
                                           mail_class=pb.MailClass.Value(args.mail_class.upper())),
                           timeout=args.timeout)
        except grpc.RpcError as exc:
            return _rpc_error(exc)
    for result in r.suppressed:
        why = ", ".join(f"{m.scope}:{pb.Reason.Name(m.reason).lower()}" for m in result.matched)
        print(f"{result.address}\tsuppressed\t{why}")
    return 0


def run_resubscribe(args: argparse.Namespace) -> int:
    import grpc

    from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
    metadata = _admin_metadata(args)
    if not metadata and not args.tls_dir:
        print("mailwarden unsubscribe: resubscribe needs the admin credential "
              f"(--credential-file or ${wire.ADMIN_TOKEN_ENV}) or an admin client certificate "
              "(--tls-dir)", file=sys.stderr)
        return 2
    channel, stub = _stub(args)
    with channel:
        try:
            r = stub.Resubscribe(pb.ResubscribeRequest(address=args.address, scope=args.scope,
                                                       source=args.source),
                                 metadata=metadata, timeout=args.timeout)
        except grpc.RpcError as exc:
            return _rpc_error(exc)
    print("removed" if r.removed else "no such suppression", f"(sequence {r.sequence})")
    return 0


# Bytes read from the file at a time, checked and sent: the client holds about this much
# whatever the file's size.
IMPORT_CHUNK_BYTES = 1 << 20


def _spool_stdin() -> IO[bytes]:
    """Standard input copied to an anonymous temporary file, so it can be checked and then
    sent (two passes) without holding it in memory."""
    spool = tempfile.TemporaryFile()
    shutil.copyfileobj(sys.stdin.buffer, spool, IMPORT_CHUNK_BYTES)
    spool.seek(0)
    return spool


def _read_chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(IMPORT_CHUNK_BYTES):
        yield chunk


class _Progress:
    """`sent 42% (310,000 rows/s)` on a terminal; nothing when stderr is not one."""

    def __init__(self, total: int, rows: int) -> None:
        self.total, self.rows = max(total, 1), rows
        self.shown = sys.stderr.isatty() and total > IMPORT_CHUNK_BYTES
        self.started = time.monotonic()

    def update(self, sent: int) -> None:
        if self.shown:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            rate = self.rows * sent / self.total / elapsed
            print(f"\rsent {sent * 100 // self.total}% ({rate:,.0f} rows/s)", end="",
                  file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def run_import(args: argparse.Namespace) -> int:
    import grpc

    from mailwarden.suppression import Reason
    from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
    from unsubscribe_store.rows import RowError, RowParser
    fmt = args.format or ("jsonl" if args.file.endswith((".jsonl", ".ndjson")) else "csv")
    try:
        source = _spool_stdin() if args.file == "-" else open(args.file, "rb")
    except OSError as exc:
        print(f"mailwarden unsubscribe: cannot read {args.file}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    with source:
        # Check the whole file here first, streaming, so a typo on line 90 000 is found
        # before anything is written (the server checks again; rows are upserts, so a
        # re-run is always safe).
        try:
            parser = RowParser(fmt, default_scope=args.scope, default_reason=Reason(args.reason),
                               default_source=args.source)
        except ValueError as exc:
            print(f"mailwarden unsubscribe: {exc}", file=sys.stderr)
            return 2
        rows = errors = 0
        total = 0
        for chunk in itertools.chain(_read_chunks(source), [None]):
            items = parser.finish() if chunk is None else parser.feed(chunk)
            total += len(chunk or b"")
            for item in items:
                if isinstance(item, RowError):
                    errors += 1
                    if errors <= 50:
                        print(f"{args.file}:{item.line}: {item.message}", file=sys.stderr)
                else:
                    rows += 1
        if errors and not args.skip_invalid:
            print(f"mailwarden unsubscribe: {errors} invalid rows; nothing imported (fix them, "
                  "or pass --skip-invalid)", file=sys.stderr)
            return 1
        source.seek(0)
        progress = _Progress(total, rows)

        def chunks():
            sent = 0
            # One chunk at least, so an empty file still gets the server's answer.
            for data in itertools.chain(_read_chunks(source), [b""] if not total else []):
                yield pb.ImportChunk(format=pb.Format.Value(fmt.upper()),
                                     default_scope=args.scope,
                                     default_reason=_reason(args.reason),
                                     default_source=args.source,
                                     skip_invalid=args.skip_invalid, data=data)
                sent += len(data)
                progress.update(sent)

        channel, stub = _stub(args)
        with channel:
            try:
                r = stub.Import(chunks(), timeout=max(args.timeout, 600.0),
                                metadata=_admin_metadata(args))
            except grpc.RpcError as exc:
                progress.done()
                return _rpc_error(exc)
        progress.done()
    print(f"imported {r.rows} rows: {r.inserted} new, {r.already_existed} already suppressed, "
          f"{r.invalid_rows} invalid (head sequence {r.last_sequence})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import grpc

    from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
    # A file is written beside its final name and renamed only once the export is complete,
    # so a failed export never leaves a truncated file that looks like a whole one.
    partial: Path | None = None
    if args.output == "-":
        out = sys.stdout.buffer
    else:
        target = Path(args.output)
        partial = target.with_name(f".{target.name}.partial")
        try:
            out = open(partial, "wb")
        except OSError as exc:
            print(f"mailwarden unsubscribe: cannot write {args.output}: "
                  f"{exc.strerror or exc}", file=sys.stderr)
            return 2
    channel, stub = _stub(args)
    try:
        with channel:
            for chunk in stub.Export(pb.ExportRequest(format=pb.Format.Value(args.format.upper()),
                                                      scope=args.scope), timeout=args.timeout,
                                     metadata=_admin_metadata(args)):
                out.write(chunk.data)
        if partial is not None:
            out.close()
            partial.replace(args.output)
            partial = None
    except grpc.RpcError as exc:
        return _rpc_error(exc)
    except OSError as exc:
        print(f"mailwarden unsubscribe: cannot write {args.output}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    finally:
        if partial is not None:
            out.close()
            partial.unlink(missing_ok=True)
    return 0


def run_watch(args: argparse.Namespace) -> int:
    import grpc

    from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
    channel, stub = _stub(args)
    with channel:
        try:
            for event in stub.Watch(pb.WatchRequest(from_sequence=args.from_sequence)):
                if event.HasField("change"):
                    c = event.change
                    print(f"{c.sequence}\t{pb.ChangeOp.Name(c.op).lower()}\t{c.address}\t"
                          f"{c.scope}\t{pb.Reason.Name(c.reason).lower()}\t{c.source}",
                          flush=True)
        except grpc.RpcError as exc:
            return _rpc_error(exc)
    return 0


def run_status(args: argparse.Namespace) -> int:
    import grpc

    from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
    channel, stub = _stub(args)
    with channel:
        try:
            s = stub.GetStatus(pb.GetStatusRequest(), timeout=args.timeout)
        except grpc.RpcError as exc:
            return _rpc_error(exc)
    print(f"ready: {'yes' if s.ready else 'no: ' + s.reason}")
    print(f"backend: {s.backend} (highly available: {'yes' if s.highly_available else 'no'})")
    print(f"durability: {s.durability}, sync standbys: {s.sync_standbys}")
    print(f"head sequence: {s.head_sequence}, suppressions: {s.suppressions}")
    return 0 if s.ready else 1


def _read_credential(path: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"mailwarden unsubscribe: cannot read credential file {path}: "
                         f"{exc.strerror or exc}") from None
    if not value:
        raise SystemExit(f"mailwarden unsubscribe: credential file {path} is empty")
    return value
