"""The key of the filter pod's suppression fingerprints: HMAC-SHA256 of ``scope NUL
address`` (both normalised), truncated to 63 bits (server/suppression_index.py holds them).

The key comes from a file — a mounted Secret shared by the pods that must agree on
fingerprints — or is made at random for one pod. Its bytes never reach a log, a repr or an
error message; ``key_id`` (a one-way hash) names its version.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

MIN_KEY_BYTES = 32


class KeyUnusable(Exception):
    """A key that cannot be used (the message says why, never the key)."""


class FingerprintKey:
    """The HMAC key fingerprints are made with. Its bytes are never shown: the repr and
    ``key_id`` give a one-way hash that names the key's version."""

    __slots__ = ("_key", "key_id", "_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise KeyUnusable(f"a suppression fingerprint key needs at least {MIN_KEY_BYTES} "
                              f"bytes (got {len(key)})")
        self._key = bytes(key)
        self.key_id = hashlib.sha256(b"mailwarden suppression key id\0" + self._key).digest()[:8]
        # HMAC (RFC 2104) with its two keyed hash states computed once: a look-up copies
        # them instead of re-keying. hmac.digest() re-keys every call (10 us against 3 us
        # measured under load); the output is the same (tests compare them).
        block = (self._key if len(self._key) <= 64 else hashlib.sha256(self._key).digest()) \
            .ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    @classmethod
    def generate(cls) -> FingerprintKey:
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> FingerprintKey:
        """A key file as a Secret mounts it: the raw bytes, or text (hex or any characters,
        surrounding whitespace ignored) of at least 32 bytes."""
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise KeyUnusable(f"cannot read the suppression key file {path}: "
                              f"{exc.strerror or exc}") from None
        text = raw.strip()
        try:
            decoded = bytes.fromhex(text.decode("ascii"))
            if len(decoded) >= MIN_KEY_BYTES:
                return cls(decoded)
        except (UnicodeDecodeError, ValueError):
            pass
        try:
            return cls(text)
        except KeyUnusable:
            raise KeyUnusable(f"the suppression key file {path} holds {len(text)} bytes; "
                              f"at least {MIN_KEY_BYTES} are needed") from None

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the key as hex to a new file only this user can read."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self._key.hex() + "\n")

    def fingerprint(self, address: str, scope: str) -> int:
        """The 63-bit fingerprint of a normalised address in a normalised scope."""
        inner = self._inner.copy()
        inner.update(f"{scope}\0{address}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return int.from_bytes(outer.digest()[:8], "big") >> 1

    def __repr__(self) -> str:
        return f"FingerprintKey(id={self.key_id.hex()})"
