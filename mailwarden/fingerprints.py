"""The key of the filter pod's suppression fingerprints: keyed BLAKE2b (RFC 7693's MAC
mode, a pseudo-random function under the key) of ``scope NUL address`` (both normalised),
8 bytes, of which 63 bits are kept (mailwarden/fingerprint_index.py holds them).

Why BLAKE2b and not HMAC-SHA256 (index format 2): both are keyed PRFs, so a fingerprint
reveals nothing about the address to whoever lacks the key, but keyed BLAKE2b is one
hashlib call — about a third of an HMAC's cost per recipient in Python, and a look-up is
two fingerprints. ``ALGORITHM`` is part of the key id, so an index or snapshot artifact
made with the other algorithm is refused like one of another key, never misread.

The key comes from a file — a mounted Secret shared by the pods that must agree on
fingerprints — or is made at random for one pod. Its bytes never reach a log, a repr or an
error message; ``key_id`` (a one-way hash) names its version.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

MIN_KEY_BYTES = 32
# Names the fingerprint function; part of key_id (bump it if the function ever changes).
ALGORITHM = b"blake2b-keyed-64/v1"
_BLAKE2B_MAX_KEY = 64


# A forgotten suppression (the store's Forget): the address column holds this instead of
# the address — the key's id and the fingerprint of (address, scope) in hex, and no "@",
# which every normalised address has.
FORGOTTEN_PREFIX = "#fp:"


def is_forgotten(address: str) -> bool:
    """Whether a stored address is a forgotten one's fingerprint, not an address."""
    return address.startswith(FORGOTTEN_PREFIX) and "@" not in address


class ForeignFingerprint(Exception):
    """A forgotten suppression fingerprinted with another key than ours."""


class KeyUnusable(Exception):
    """A key that cannot be used (the message says why, never the key)."""


class FingerprintKey:
    """The key fingerprints are made with. Its bytes are never shown: the repr and
    ``key_id`` give a one-way hash that names the key's version (and the algorithm)."""

    __slots__ = ("_key", "key_id", "_mac_key", "fingerprint")

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise KeyUnusable(f"a suppression fingerprint key needs at least {MIN_KEY_BYTES} "
                              f"bytes (got {len(key)})")
        self._key = bytes(key)
        self.key_id = hashlib.sha256(b"mailwarden suppression key id\0" + ALGORITHM + b"\0"
                                     + self._key).digest()[:8]
        # BLAKE2b takes a key of at most 64 bytes; a longer one is hashed down to 64.
        self._mac_key = (self._key if len(self._key) <= _BLAKE2B_MAX_KEY
                         else hashlib.blake2b(self._key, digest_size=_BLAKE2B_MAX_KEY).digest())
        self.fingerprint = _fingerprint_function(self._mac_key)

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
        return cls.from_content(raw, f"the suppression key file {path}")

    @classmethod
    def from_content(cls, raw: bytes, source: str = "the suppression key") -> FingerprintKey:
        """A key file's content (see from_file); `source` names it in the error (the
        operator checks a Secret's value with the rule the pods will apply)."""
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
            raise KeyUnusable(f"{source} holds {len(text)} bytes; "
                              f"at least {MIN_KEY_BYTES} are needed") from None

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the key as hex to a new file only this user can read."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self._key.hex() + "\n")

    def fingerprint_bytes(self, data: bytes) -> int:
        """The 63-bit fingerprint of ``scope NUL address`` already encoded (the store's
        artifact builder fingerprints rows it has as bytes)."""
        return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=self._mac_key).digest(),
                              "little") >> 1

    def forgotten(self, address: str, scope: str) -> str:
        """What the store keeps instead of a forgotten (normalised) address in ``scope``:
        the fingerprint filter pods look up, and nothing to recover the address from
        without the key."""
        return f"{FORGOTTEN_PREFIX}{self.key_id.hex()}:{self.fingerprint(address, scope):016x}"

    def stored_fingerprint(self, address: str, scope: str) -> int:
        """The fingerprint of a stored suppression: of the address, or the one a forgotten
        suppression keeps. Raises ForeignFingerprint for one kept under another key (the
        key was rotated after the address was forgotten: docs/unsubscribe.md)."""
        if not is_forgotten(address):
            return self.fingerprint(address, scope)
        key_hex, _, fp_hex = address[len(FORGOTTEN_PREFIX):].partition(":")
        if key_hex != self.key_id.hex():
            raise ForeignFingerprint(f"a forgotten suppression is kept under fingerprint key "
                                     f"{key_hex}, not {self.key_id.hex()}")
        return int(fp_hex, 16)

    def __repr__(self) -> str:
        return f"FingerprintKey(id={self.key_id.hex()})"


def _fingerprint_function(mac_key: bytes) -> Callable[[str, str], int]:
    """``fingerprint(address, scope)``: the 63-bit fingerprint of a normalised address in a
    normalised scope. A closure over local names, because this runs twice per recipient in
    Classify: every attribute or global look-up saved is measurable (benchmarks/
    suppression_scale.py prints the cost)."""
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes

    def fingerprint(address: str, scope: str) -> int:
        return from_bytes(blake2b(f"{scope}\0{address}".encode(), digest_size=8,
                                  key=mac_key).digest(), "little") >> 1

    return fingerprint
