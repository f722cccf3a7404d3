"""Opaque one-click unsubscribe tokens (RFC 8058 URLs).

A token names (address, scope) to the store and to nobody else: whoever sees the URL —
ingress and proxy logs, link scanners, a forwarded message — must not learn the address.
Two formats exist; both verify, the second is minted:

- **v2 (encrypted, minted since issue 20)**: base64url (no padding) of
  ``0x02 || key id (4) || AES-SIV(day || address || scope)``. AES-SIV (RFC 5297, 512-bit
  key derived from the signing key with HKDF-SHA256) is authenticated encryption: the
  synthetic IV is a MAC over the plaintext and the header, so a changed character fails
  verification exactly like a bad HMAC, and nothing of the address shows. It needs no
  nonce, so minting stays a pure function of (key, address, scope, day); tokens for the
  same recipient differ from day to day.
- **v1 (signed, issued before)**: ``0x01 || key id || day || address || scope || HMAC``,
  HMAC-SHA256 compared in constant time. Its payload is readable base64, which is why v2
  exists; v1 tokens already in inboxes keep working as long as their key is in the ring.

Opaque identifiers (a random id looked up in the database) were the alternative; they would
make every minted link a database write at the sender — millions per campaign, minted
offline by the helper library — and an outage of the store a failure to send. Encryption
keeps minting stateless.

The key id names the key version (a one-way hash of it), so verification picks the right key
among the current one and the previous ones. ``verify_token`` tells three failures apart:
``TokenInvalid`` (forged, tampered, malformed — callers must not reveal which),
``TokenExpired`` (authentic, but older than the server's maximum age; carries the claims) and
``TokenUnknownKey`` (signed by a key not in the ring, so it cannot be checked at all).
Tokens do not expire unless the server is given a maximum age (CASL needs at least 60 days).

Keys are secrets: they come from files (a mounted Secret) or the environment, must be at
least 32 bytes, and never appear in a repr, a log line or an error message. ``rotate_keys``
moves the current key to ``previous`` with the day it was retired, and drops a previous key
only when it was retired more than ``keep_days`` (at least 60) days ago.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import os
import re
import secrets
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mailwarden.addresses import normalize_address, normalize_scope

FORMAT_V1 = 1
FORMAT_V2 = 2
MAC_LEN = 32
SIV_LEN = 16
MIN_KEY_BYTES = 32
MIN_MAX_AGE_DAYS = 60  # CASL: an unsubscribe mechanism must work for at least 60 days
MIN_KEEP_RETIRED_DAYS = 60  # ...so a retired key keeps verifying at least that long
DEFAULT_KEEP_RETIRED_DAYS = 90
MAX_TOKEN_CHARS = 1024
URLSAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_CONTEXT = b"mailwarden-unsubscribe-token\x00"
_CONTEXT_V2 = b"mailwarden-unsubscribe-token-v2\x00"
_KEY_ID_CONTEXT = b"mailwarden-signing-key-id\x00"
_HEADER = struct.Struct(">B4sI")  # v1: format, key id, issued day (days since the epoch)
_HEADER_V2 = struct.Struct(">B4s")  # v2: format, key id (the rest is encrypted)
_DAY = struct.Struct(">I")

ENV_KEY = "MAILWARDEN_SIGNING_KEY"
ENV_PREVIOUS_KEYS = "MAILWARDEN_PREVIOUS_SIGNING_KEYS"
ENV_KEY_DIR = "MAILWARDEN_SIGNING_KEY_DIR"


class SigningKeyError(ValueError):
    """Signing keys missing or unusable (the message never contains key material)."""


class TokenInvalid(ValueError):
    """A token that is malformed, forged, tampered with, signed by an unknown key or too old.
    Deliberately carries no detail: callers must not reveal validity anyway."""


class TokenExpired(TokenInvalid):
    """An authentic token (it verified) older than the maximum age."""

    def __init__(self, claims: TokenClaims) -> None:
        super().__init__()
        self.claims = claims


class TokenUnknownKey(TokenInvalid):
    """A well-formed token naming a key the ring does not hold: it cannot be checked."""

    def __init__(self, key_id: str) -> None:
        super().__init__()
        self.key_id = key_id  # hex


class SigningKey:
    """An HMAC key. The id is derived from the key (a one-way hash), so a Secret can simply
    hold ``current`` and ``previous`` files and rotation needs no bookkeeping."""

    __slots__ = ("_secret", "key_id", "_siv")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise SigningKeyError(f"signing key too short: need at least {MIN_KEY_BYTES} bytes "
                            "(generate one with `mailwarden token generate-key`)")
        self._secret = bytes(secret)
        self.key_id = hashlib.sha256(_KEY_ID_CONTEXT + self._secret).digest()[:4]
        self._siv: AESSIV | None = None

    def mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _CONTEXT + payload, hashlib.sha256).digest()

    def siv(self) -> AESSIV:
        """The AES-SIV key of format v2, derived from this key (HKDF-SHA256)."""
        if self._siv is None:
            derived = HKDF(algorithm=hashes.SHA256(), length=64, salt=None,
                           info=_CONTEXT_V2 + b"aes-siv-512").derive(self._secret)
            self._siv = AESSIV(derived)
        return self._siv

    def __repr__(self) -> str:  # never show the secret
        return f"SigningKey(id={self.key_id.hex()})"


@dataclass(frozen=True)
class KeyRing:
    current: SigningKey
    previous: tuple[SigningKey, ...] = ()
    # The day each previous key was retired (None: not recorded), in the same order.
    retired_on: tuple[datetime.date | None, ...] = field(default=())

    def find(self, key_id: bytes) -> SigningKey | None:
        for key in (self.current, *self.previous):
            if hmac.compare_digest(key.key_id, key_id):
                return key
        return None

    @property
    def key_ids(self) -> list[str]:
        """Hex ids of every key that verifies, the current one first."""
        return [key.key_id.hex() for key in (self.current, *self.previous)]

    @classmethod
    def from_secrets(cls, current: bytes | str, previous: Iterable[bytes | str] = ()) -> KeyRing:
        def raw(value: bytes | str) -> bytes:
            return value.encode() if isinstance(value, str) else value
        keys = tuple(SigningKey(raw(p)) for p in previous)
        return cls(SigningKey(raw(current)), keys, (None,) * len(keys))


@dataclass(frozen=True)
class TokenClaims:
    address: str
    scope: str
    key_id: str  # hex
    issued_day: int
    format: int = FORMAT_V2


def generate_key() -> str:
    """A new random signing key (256 bits, base64url text)."""
    return secrets.token_urlsafe(32)


def _today() -> int:
    return int(time.time() // 86400)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_token(keys: KeyRing, address: str, scope: str, *, issued_day: int | None = None,
               token_format: int = FORMAT_V2) -> str:
    """The token for (normalised address, scope), with the current key. ``token_format`` 1
    mints the old, readable format (for tests of compatibility only)."""
    address_b = normalize_address(address).encode()
    scope_b = normalize_scope(scope).encode()
    day = _today() if issued_day is None else issued_day
    key = keys.current
    if token_format == FORMAT_V1:
        payload = (_HEADER.pack(FORMAT_V1, key.key_id, day)
                   + bytes([len(address_b)]) + address_b + bytes([len(scope_b)]) + scope_b)
        return _b64(payload + key.mac(payload))
    header = _HEADER_V2.pack(FORMAT_V2, key.key_id)
    plaintext = _DAY.pack(day) + bytes([len(address_b)]) + address_b + scope_b
    return _b64(header + key.siv().encrypt(plaintext, [_CONTEXT_V2, header]))


def verify_token(keys: KeyRing, token: str, *, max_age_days: int = 0,
                 today: int | None = None) -> TokenClaims:
    """Return the claims of a valid token; raise TokenInvalid (without saying why) for a
    token that is not authentic, TokenExpired for an authentic one older than
    ``max_age_days`` (0: never), TokenUnknownKey for one whose key is not in the ring."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise TokenInvalid()
    # b64decode maps the URL-safe "-_" onto "+/" and then accepts both spellings; a token
    # has one spelling only (a link with "+" for "-" is not the link we sent).
    if not URLSAFE_TOKEN.fullmatch(token):
        raise TokenInvalid()
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise TokenInvalid() from None
    if not raw:
        raise TokenInvalid()
    if raw[0] == FORMAT_V2:
        claims = _verify_v2(keys, raw)
    elif raw[0] == FORMAT_V1:
        claims = _verify_v1(keys, raw)
    else:
        raise TokenInvalid()
    if max_age_days:
        now = _today() if today is None else today
        if now - claims.issued_day > max_age_days:
            raise TokenExpired(claims)
    return claims


def _verify_v1(keys: KeyRing, raw: bytes) -> TokenClaims:
    if len(raw) < _HEADER.size + 2 + MAC_LEN:
        raise TokenInvalid()
    payload, mac = raw[:-MAC_LEN], raw[-MAC_LEN:]
    _, key_id, issued_day = _HEADER.unpack_from(payload)
    key = keys.find(key_id)
    if key is None:
        raise TokenUnknownKey(key_id.hex())
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
    return TokenClaims(address, scope, key_id.hex(), issued_day, FORMAT_V1)


def _verify_v2(keys: KeyRing, raw: bytes) -> TokenClaims:
    if len(raw) < _HEADER_V2.size + SIV_LEN + _DAY.size + 3:
        raise TokenInvalid()
    header, sealed = raw[:_HEADER_V2.size], raw[_HEADER_V2.size:]
    _, key_id = _HEADER_V2.unpack(header)
    key = keys.find(key_id)
    if key is None:
        raise TokenUnknownKey(key_id.hex())
    try:
        plaintext = key.siv().decrypt(sealed, [_CONTEXT_V2, header])
    except InvalidTag:
        raise TokenInvalid() from None
    try:  # authentic from here on: only we encrypt with this key
        (issued_day,) = _DAY.unpack_from(plaintext)
        alen = plaintext[_DAY.size]
        start = _DAY.size + 1
        address = plaintext[start:start + alen].decode()
        scope = plaintext[start + alen:].decode()
    except (IndexError, UnicodeDecodeError, struct.error):
        raise TokenInvalid() from None
    if not address or not scope:
        raise TokenInvalid()
    return TokenClaims(address, scope, key_id.hex(), issued_day, FORMAT_V2)


def _read_key_file(path: Path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key file {path}: "
                              f"{exc.strerror or exc}") from None
    # One key per non-empty line (a `previous` file may list several); surrounding
    # whitespace (the newline editors and `kubectl create secret --from-file` leave) ignored.
    return [line.strip() for line in data.splitlines() if line.strip()]


def parse_previous_key_line(line: bytes, where: str) -> tuple[bytes, datetime.date | None]:
    """``KEY`` or ``KEY retired=YYYY-MM-DD`` (the form `rotate_keys` writes)."""
    key, _, rest = line.partition(b" ")
    rest = rest.strip()
    if not rest:
        return key, None
    if not rest.startswith(b"retired="):
        raise SigningKeyError(f"{where}: a previous key line is 'KEY' or "
                              "'KEY retired=YYYY-MM-DD'")
    try:
        return key, datetime.date.fromisoformat(rest[len(b"retired="):].decode())
    except ValueError:
        raise SigningKeyError(f"{where}: retired= must be a date (YYYY-MM-DD)") from None


def _ring(current: bytes, previous: Sequence[tuple[bytes, datetime.date | None]]) -> KeyRing:
    return KeyRing(SigningKey(current), tuple(SigningKey(k) for k, _ in previous),
                   tuple(d for _, d in previous))


def load_keyring(*, key_dir: str | Path | None = None, key_file: str | Path | None = None,
                 previous_files: Sequence[str | Path] = (),
                 env: Mapping[str, str] | None = None) -> KeyRing:
    """Load signing keys, first match wins:

    1. ``key_dir`` (or $MAILWARDEN_SIGNING_KEY_DIR): a directory — typically a mounted
       Secret — with a ``current`` file and an optional ``previous`` file (one key per line,
       optionally followed by ``retired=YYYY-MM-DD``);
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
        previous: list[tuple[bytes, datetime.date | None]] = []
        if (directory / "previous").exists():
            previous = [parse_previous_key_line(line, str(directory / "previous"))
                        for line in _read_key_file(directory / "previous")]
        return _ring(current[0], previous)
    if key_file:
        current = _read_key_file(Path(key_file))
        if len(current) != 1:
            raise SigningKeyError(f"{key_file} must hold exactly one key")
        previous = [parse_previous_key_line(line, str(f)) for f in previous_files
                    for line in _read_key_file(Path(f))]
        return _ring(current[0], previous)
    if env.get(ENV_KEY):
        previous = [parse_previous_key_line(p.strip().encode(), ENV_PREVIOUS_KEYS)
                    for p in env.get(ENV_PREVIOUS_KEYS, "").split(",") if p.strip()]
        return _ring(env[ENV_KEY].strip().encode(), previous)
    raise SigningKeyError("no signing key: pass --signing-key-dir or --signing-key-file, or set "
                    f"${ENV_KEY_DIR} or ${ENV_KEY}")


def rotate_keys(key_dir: str | Path, *, today: datetime.date | None = None,
                keep_days: int = DEFAULT_KEEP_RETIRED_DAYS) -> KeyRing:
    """Rotate the keys in ``key_dir`` (``current`` and ``previous`` files): a new current
    key; the old one moves to ``previous`` with ``retired=<today>``; previous keys retired
    more than ``keep_days`` ago are dropped (those without a date are kept). Links signed
    with a retired key keep working for at least ``keep_days`` days, which must be at least
    60 (CASL). Files are replaced atomically, readable by the owner only."""
    if keep_days < MIN_KEEP_RETIRED_DAYS:
        raise SigningKeyError(f"retired keys must keep verifying at least "
                              f"{MIN_KEEP_RETIRED_DAYS} days (CASL), not {keep_days}")
    directory = Path(key_dir)
    today = today or datetime.date.today()
    current = _read_key_file(directory / "current")
    if len(current) != 1:
        raise SigningKeyError(f"{directory / 'current'} must hold exactly one key")
    previous = []
    if (directory / "previous").exists():
        previous = [parse_previous_key_line(line, str(directory / "previous"))
                    for line in _read_key_file(directory / "previous")]
    kept = [(key, day) for key, day in previous
            if day is None or (today - day).days <= keep_days]
    new = generate_key().encode()
    entries = [(current[0], today), *kept]
    _write_secret(directory / "previous", b"".join(
        key + (b" retired=" + day.isoformat().encode() if day else b"") + b"\n"
        for key, day in entries))
    _write_secret(directory / "current", new + b"\n")
    return _ring(new, entries)


def _write_secret(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)
