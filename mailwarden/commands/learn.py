"""`mailwarden learn --spam|--ham FILE... --target T`: record messages a person labelled
with a filter server's Learning service, for the next `mailwarden train`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mailwarden import wire
from mailwarden.bearer import bearer_metadata

ORIGINS = {"user": "USER_REPORT", "operator": "OPERATOR_REVIEW"}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "learn", help="record messages people labelled ham or spam on a filter server",
        description="Send each FILE (a raw RFC 5322 message) to the filter server's "
        "Learning service with the label a person gave it; the server stores it in its "
        "--learn-dir for the next `mailwarden train` (docs/model.md, 'Learning from users'). "
        "Prints one line per message: what the server did and its verdict now. Exit status "
        "1 if any message was refused.")
    label = parser.add_mutually_exclusive_group(required=True)
    label.add_argument("--spam", action="store_true", help="the FILEs are spam")
    label.add_argument("--ham", action="store_true", help="the FILEs are ham")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--target", default=os.environ.get("MAILWARDEN_TARGET"),
                        help="host:port of one filter server [default: $MAILWARDEN_TARGET]")
    parser.add_argument("--origin", choices=sorted(ORIGINS), default="user",
                        help="who labelled them: a recipient (user) or an operator who "
                        "reviewed them [default: user]")
    parser.add_argument("--credential-file", type=Path, metavar="FILE",
                        help=f"the server's admin credential [default: ${wire.ADMIN_TOKEN_ENV}]")
    parser.add_argument("--tls-dir", type=Path, metavar="DIR",
                        help="use TLS: DIR/ca.crt verifies the server; DIR/tls.crt and "
                        "DIR/tls.key, when present, are the client certificate")
    parser.add_argument("--deadline", type=float, default=10.0, metavar="SECONDS",
                        help="deadline per message (default 10)")
    parser.set_defaults(func=run)


def _credential(path: Path | None) -> str:
    if path is None:
        return os.environ.get(wire.ADMIN_TOKEN_ENV, "").strip()
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"mailwarden learn: cannot read credential file {path}: "
                         f"{exc.strerror or exc}") from None
    if not value:
        raise SystemExit(f"mailwarden learn: credential file {path} is empty")
    return value


def run(args: argparse.Namespace) -> int:
    import grpc

    from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
    from mailwarden.keepalive import keepalive_options

    if not args.target:
        print("mailwarden learn: give --target HOST:PORT (or set $MAILWARDEN_TARGET)",
              file=sys.stderr)
        return 2
    credential = _credential(args.credential_file)
    if not credential:
        print(f"mailwarden learn: the server's admin credential is needed (--credential-file "
              f"or ${wire.ADMIN_TOKEN_ENV})", file=sys.stderr)
        return 2
    if args.tls_dir is not None:
        from mailwarden.tls import TlsConfigError, channel_credentials
        try:
            channel = grpc.secure_channel(args.target, channel_credentials(args.tls_dir),
                                          keepalive_options())
        except TlsConfigError as exc:
            print(f"mailwarden learn: {exc}", file=sys.stderr)
            return 2
    else:
        channel = grpc.insecure_channel(args.target, keepalive_options())
    label = filter_pb2.LABEL_SPAM if args.spam else filter_pb2.LABEL_HAM
    origin = filter_pb2.LabelOrigin.Value(ORIGINS[args.origin])
    metadata = bearer_metadata(credential)
    failed = 0
    with channel:
        stub = filter_pb2_grpc.LearningStub(channel)
        for name in args.files:
            try:
                raw = Path(name).read_bytes()
            except OSError as exc:
                print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
                failed += 1
                continue
            try:
                answer = stub.Learn(filter_pb2.LearnRequest(
                    request_id=Path(name).name[:128], message=raw, label=label,
                    origin=origin), metadata=metadata, timeout=args.deadline)
            except grpc.RpcError as exc:
                print(f"{name}: {exc.code().name}: {exc.details()}", file=sys.stderr)
                failed += 1
                continue
            print(f"{name}: {filter_pb2.LearnOutcome.Name(answer.outcome)} (filter says "
                  f"{filter_pb2.Action.Name(answer.action)}; folder holds "
                  f"{answer.ham_recorded} ham, {answer.spam_recorded} spam)")
    return 1 if failed else 0
