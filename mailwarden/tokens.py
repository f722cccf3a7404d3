"""Opaque one-click unsubscribe tokens (RFC 8058 URLs).

A token is base64url (no padding) of ``payload || HMAC-SHA256(key, context || payload)``;
the payload holds a format byte, the signing key's id (its "version"), the day it was issued,
the normalised address and the scope. Verification recomputes the MAC with the key named by
the id — the current key or one of the previous keys, so tokens already in inboxes keep
working after a rotation — and compares in constant time (``hmac.compare_digest``). Tokens do
not expire unless the server is given a maximum age (CASL needs at least 60 days).

Keys are secrets: they come from files (a mounted Secret) or the environment, must be at
least 32 bytes, and never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailwarden.addresses import normalize_address, normalize_scope

FORMAT_V1 = 1
MAC_LEN = 32
MIN_KEY_BYTES = 32
MIN_MAX_AGE_DAYS = 60  # CASL: an unsubscribe mechanism must work for at least 60 days
_CONTEXT = b"mailwarden-unsubscribe-token\x00"
_KEY_ID_CONTEXT = b"mailwarden-signing-key-id\x00"
_HEADER = struct.Struct(">B4sI")  # format, key id, issued day (days since the epoch)

ENV_KEY = "MAILWARDEN_SIGNING_KEY"
ENV_PREVIOUS_KEYS = "MAILWARDEN_PREVIOUS_SIGNING_KEYS"
ENV_KEY_DIR = "MAILWARDEN_SIGNING_KEY_DIR"


class SigningKeyError(ValueError):
    """Signing keys missing or unusable (the message never contains key material)."""


class TokenInvalid(ValueError):
    """A token that is malformed, forged, tampered with, signed by an unknown key or too old.
    Deliberately carries no detail: callers must not reveal validity anyway."""


class SigningKey:
    """An HMAC key. The id is derived from the key (a one-way hash), so a Secret can simply
    hold ``current`` and ``previous`` files and rotation needs no bookkeeping."""

    __slots__ = ("_secret", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise SigningKeyError(f"signing key too short: need at least {MIN_KEY_BYTES} bytes "
                            "(generate one with `mailwarden token generate-key`)")
        self._secret = bytes(secret)
        self.key_id = hashlib.sha256(_KEY_ID_CONTEXT + self._secret).digest()[:4]

    def mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _CONTEXT + payload, hashlib.sha256).digest()

    def __repr__(self) -> str:  # never show the secret
        return f"SigningKey(id={self.key_id.hex()})"


@dataclass(frozen=True)
class KeyRing:
    current: SigningKey
    previous: tuple[SigningKey, ...] = ()

    def find(self, key_id: bytes) -> SigningKey | None:
        for key in (self.current, *self.previous):
            if hmac.compare_digest(key.key_id, key_id):
                return key
        return None

    @classmethod
    def from_secrets(cls, current: bytes | str, previous: Iterable[bytes | str] = ()) -> KeyRing:
        def raw(value: bytes | str) -> bytes:
            return value.encode() if isinstance(value, str) else value
        return cls(SigningKey(raw(current)), tuple(SigningKey(raw(p)) for p in previous))


@dataclass(frozen=True)
class TokenClaims:
    address: str
    scope: str
    key_id: str  # hex
    issued_day: int


def generate_key() -> str:
    """A new random signing key (256 bits, base64url text)."""
    return secrets.token_urlsafe(32)


def _today() -> int:
    return int(time.time() // 86400)


def mint_token(keys: KeyRing, address: str, scope: str, *, issued_day: int | None = None) -> str:
    """Sign (normalised address, scope) with the current key."""
    address_b = normalize_address(address).encode()
    scope_b = normalize_scope(scope).encode()
    day = _today() if issued_day is None else issued_day
    payload = (_HEADER.pack(FORMAT_V1, keys.current.key_id, day)
               + bytes([len(address_b)]) + address_b + bytes([len(scope_b)]) + scope_b)
    token = payload + keys.current.mac(payload)
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")


def verify_token(keys: KeyRing, token: str, *, max_age_days: int = 0,
                 today: int | None = None) -> TokenClaims:
    """Return the claims of a valid token or raise TokenInvalid (without saying why)."""
    if not isinstance(token, str) or not 0 < len(token) <= 1024:
        raise TokenInvalid()
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise TokenInvalid() from None
    if len(raw) < _HEADER.size + 2 + MAC_LEN:
        raise TokenInvalid()
    payload, mac = raw[:-MAC_LEN], raw[-MAC_LEN:]
    fmt, key_id, issued_day = _HEADER.unpack_from(payload)
    if fmt != FORMAT_V1:
        raise TokenInvalid()
    key = keys.find(key_id)
    if key is None:
        raise TokenInvalid()
    if not hmac.compare_digest(key.mac(payload), mac):
        raise TokenInvalid()
    # Only a payload we signed gets parsed further.
    try:
        pos = _HEADER.size
        alen = payload[pos]
        address = payload[pos + 1:pos + 1 + alen].decode()
        pos += 1 + alen
        slen = payload[pos]
        scope = payload[pos + 1:pos + 1 + slen].decode()
        if pos + 1 + slen != len(payload):
            raise TokenInvalid()
    except (IndexError, UnicodeDecodeError):
        raise TokenInvalid() from None
    if max_age_days:
        now = _today() if today is None else today
        if now - issued_day > max_age_days:
            raise TokenInvalid()
    return TokenClaims(address, scope, key_id.hex(), issued_day)


def _read_key_file(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key file {path}: "
                              f"{exc.strerror or exc}") from None
    # One key per non-empty line (a `previous` file may list several); surrounding
    # whitespace (the newline editors and `kubectl create secret --from-file` leave) ignored.
    return [line.strip() for line in data.splitlines() if line.strip()]


def load_keyring(*, key_dir: str | Path | None = None, key_file: str | Path | None = None,
                 previous_files: Sequence[str | Path] = (),
                 env: Mapping[str, str] | None = None) -> KeyRing:
    """Load signing keys, first match wins:

    1. ``key_dir`` (or $MAILWARDEN_SIGNING_KEY_DIR): a directory — typically a mounted
       Secret — with a ``current`` file and an optional ``previous`` file (one key per line);
    2. ``key_file`` plus any ``previous_files``;
    3. $MAILWARDEN_SIGNING_KEY plus $MAILWARDEN_PREVIOUS_SIGNING_KEYS (comma-separated).
    """
    env = os.environ if env is None else env
    key_dir = key_dir or env.get(ENV_KEY_DIR) or None
    if key_dir:
        directory = Path(key_dir)
        current = _read_key_file(directory / "current")
        if len(current) != 1:
            raise SigningKeyError(f"{directory / 'current'} must hold exactly one key")
        previous: list[bytes] = []
        if (directory / "previous").exists():
            previous = _read_key_file(directory / "previous")
        return KeyRing(SigningKey(current[0]), tuple(SigningKey(p) for p in previous))
    if key_file:
        current = _read_key_file(Path(key_file))
        if len(current) != 1:
            raise SigningKeyError(f"{key_file} must hold exactly one key")
        previous = [k for f in previous_files for k in _read_key_file(Path(f))]
        return KeyRing(SigningKey(current[0]), tuple(SigningKey(p) for p in previous))
    if env.get(ENV_KEY):
        previous_env = [p.strip() for p in env.get(ENV_PREVIOUS_KEYS, "").split(",") if p.strip()]
        return KeyRing.from_secrets(env[ENV_KEY].strip(), previous_env)
    raise SigningKeyError("no signing key: pass --signing-key-dir or --signing-key-file, or set "
                    f"${ENV_KEY_DIR} or ${ENV_KEY}")
