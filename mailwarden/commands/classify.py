"""`mailwarden classify FILE... --target T`: ask a filter server for a verdict per message."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

TOP_HITS = 3


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "classify", help="classify raw messages through the filter service",
        description="Send each FILE (a raw RFC 5322 message; '-' reads stdin) to the filter "
        "service and print one verdict line per message: action, score, top rule hits and "
        "the policy hash that answered. Calls are balanced across every replica of the "
        "target and retried on UNAVAILABLE. Exit status 1 if any message failed.")
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--target", default=os.environ.get("MAILWARDEN_TARGET"),
                        help="dns:///name:port, host:port, or a list ip:port,ip:port "
                        "[default: $MAILWARDEN_TARGET]")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per message instead")
    parser.add_argument("--mail-from", default="", help="envelope MAIL FROM")
    parser.add_argument("--recipient", action="append", default=[], metavar="ADDR",
                        help="envelope RCPT TO (repeatable)")
    parser.add_argument("--client-ip", default="", help="connecting client's IP address")
    parser.add_argument("--helo", default="", help="HELO/EHLO name")
    parser.add_argument("--deadline", type=float, default=5.0, metavar="SECONDS",
                        help="deadline per message, retries included (default 5)")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true",
                     help="use TLS, verifying the server against the system CAs")
    tls.add_argument("--tls-ca", type=Path, metavar="PEM",
                     help="CA certificate that signed the server's (implies --tls)")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM",
                     help="client certificate, for mutual TLS")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="client private key")
    tls.add_argument("--tls-server-name", metavar="NAME",
                     help="name to check in the server certificate (default: the target's)")
    parser.set_defaults(func=run)


def _read(name: str) -> bytes:
    return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()


def _line(name: str, verdict: dict) -> str:
    hits = sorted((h for h in verdict["hits"] if h["score"]), key=lambda h: -abs(h["score"]))
    shown = ", ".join(f"{h['name']} {h['score']:+.2f}" for h in hits[:TOP_HITS])
    if len(hits) > TOP_HITS:
        shown += f" (+{len(hits) - TOP_HITS} more)"
    return (f"{name}: {verdict['action']} score={verdict['score']:.2f} "
            f"policy={verdict['policy_hash']}" + (f" hits: {shown}" if shown else ""))


def run(args: argparse.Namespace) -> int:
    from mailwarden.client import ClassifyError, FilterClient, verdict_dict

    if not args.deadline > 0:  # also refuses NaN
        print(f"mailwarden classify: --deadline must be a positive number of seconds "
              f"(got {args.deadline:g})", file=sys.stderr)
        return 2
    if not args.target:
        print("mailwarden classify: --target is required (or set MAILWARDEN_TARGET)",
              file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("mailwarden classify: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        client = FilterClient(args.target, deadline=args.deadline, tls=args.tls,
                              ca_cert=args.tls_ca, client_cert=args.tls_cert,
                              client_key=args.tls_key, server_name=args.tls_server_name)
    except (ValueError, OSError) as exc:
        print(f"mailwarden classify: {exc}", file=sys.stderr)
        return 2
    failed = 0
    with client:
        for name in args.files:
            try:
                raw = _read(name)
                response = client.classify(raw, mail_from=args.mail_from,
                                           recipients=args.recipient,
                                           client_ip=args.client_ip, helo=args.helo)
            except OSError as exc:
                print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
                failed += 1
                continue
            except ClassifyError as exc:
                print(f"{name}: {exc}", file=sys.stderr)
                failed += 1
                continue
            verdict = verdict_dict(response)
            if args.json:
                print(json.dumps({"file": name, **verdict}), flush=True)
            else:
                print(_line(name, verdict), flush=True)
    return 1 if failed else 0
