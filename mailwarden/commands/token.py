"""`mailwarden token generate-key|rotate|mint|headers|verify`: one-click unsubscribe tokens."""

from __future__ import annotations

import argparse
import sys


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "signing keys", "first match wins: --signing-key-dir, --signing-key-file, then "
        "$MAILWARDEN_SIGNING_KEY_DIR, $MAILWARDEN_SIGNING_KEY "
        "(+ $MAILWARDEN_PREVIOUS_SIGNING_KEYS)")
    group.add_argument("--signing-key-dir", metavar="DIR",
                       help="directory (e.g. a mounted Secret) with a 'current' key file and "
                            "an optional 'previous' file (one key per line)")
    group.add_argument("--signing-key-file", metavar="FILE", help="file holding the current key")
    group.add_argument("--previous-signing-key-file", metavar="FILE", action="append",
                       default=[], help="file with keys still accepted (repeatable)")


def keyring_from_args(args: argparse.Namespace):
    from mailwarden.tokens import load_keyring
    return load_keyring(key_dir=args.signing_key_dir, key_file=args.signing_key_file,
                        previous_files=args.previous_signing_key_file)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("token", help="mint and check one-click unsubscribe tokens",
                            description="Tokens carry (address, scope, key version) encrypted "
                            "and authenticated (AES-SIV); see docs/unsubscribe.md.")
    tsub = parser.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    gen = tsub.add_parser("generate-key", help="print a new random signing key")
    gen.set_defaults(func=run_generate)
    rot = tsub.add_parser("rotate", help="new current key in a key directory; the old one "
                          "moves to 'previous' and keeps verifying")
    rot.add_argument("--signing-key-dir", metavar="DIR", required=True,
                     help="directory with the 'current' and 'previous' files")
    rot.add_argument("--keep-days", type=int, default=90, metavar="DAYS",
                     help="drop previous keys retired more than DAYS ago (default 90, "
                          "at least 60: CASL)")
    rot.set_defaults(func=run_rotate)
    for name, helptext in (("mint", "print the token for an address and scope"),
                           ("headers", "print List-Unsubscribe and List-Unsubscribe-Post")):
        p = tsub.add_parser(name, help=helptext)
        p.add_argument("--address", required=True)
        p.add_argument("--scope", required=True, help="list name, or '*' for all mail")
        add_key_arguments(p)
        if name == "headers":
            p.add_argument("--base-url", required=True,
                           help="public URL of the one-click endpoint, e.g. "
                                "https://unsubscribe.example.com")
            p.add_argument("--mailto", help="optional mailto: alternative (RFC 2369)")
        p.set_defaults(func=run_mint if name == "mint" else run_headers)
    verify = tsub.add_parser("verify", help="check a token and print what it names")
    verify.add_argument("token")
    verify.add_argument("--max-age-days", type=int, default=0)
    add_key_arguments(verify)
    verify.set_defaults(func=run_verify)


def _fail(message: str) -> int:
    print(f"mailwarden token: {message}", file=sys.stderr)
    return 2


def run_generate(args: argparse.Namespace) -> int:
    from mailwarden.tokens import generate_key
    print(generate_key())
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    from mailwarden.tokens import SigningKeyError, rotate_keys
    try:
        ring = rotate_keys(args.signing_key_dir, keep_days=args.keep_days)
    except (SigningKeyError, OSError) as exc:
        return _fail(str(exc))
    print(f"current key {ring.current.key_id.hex()}; previous keys still verifying: "
          f"{len(ring.previous)}")
    return 0


def run_mint(args: argparse.Namespace) -> int:
    from mailwarden.tokens import mint_token
    try:
        print(mint_token(keyring_from_args(args), args.address, args.scope))
    except ValueError as exc:
        return _fail(str(exc))
    return 0


def run_headers(args: argparse.Namespace) -> int:
    from mailwarden.unsubscribe_headers import list_unsubscribe_headers
    try:
        headers = list_unsubscribe_headers(args.address, args.scope, keys=keyring_from_args(args),
                                           base_url=args.base_url, mailto=args.mailto)
    except ValueError as exc:
        return _fail(str(exc))
    for name, value in headers.items():
        print(f"{name}: {value}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from mailwarden.tokens import TokenExpired, TokenInvalid, TokenUnknownKey, verify_token
    try:
        claims = verify_token(keyring_from_args(args), args.token, max_age_days=args.max_age_days)
    except TokenExpired as exc:
        print(f"authentic but expired token (issued_day={exc.claims.issued_day}, older than "
              f"{args.max_age_days} days)", file=sys.stderr)
        return 1
    except TokenUnknownKey as exc:
        print(f"token signed by key {exc.key_id}, which is not configured: cannot check it",
              file=sys.stderr)
        return 1
    except TokenInvalid:
        print("invalid token (malformed, forged or tampered)",
              file=sys.stderr)
        return 1
    except ValueError as exc:
        return _fail(str(exc))
    print(f"address={claims.address} scope={claims.scope} key={claims.key_id} "
          f"issued_day={claims.issued_day}")
    return 0
