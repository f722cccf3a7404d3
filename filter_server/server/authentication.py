"""The worker's side of sender authentication: one `Authenticator` (event loop thread,
resolver, cache) per worker, the one-click token check with the store's keys, and the call
the servicer makes for each message before it queues for its classification turn."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from filter_server.auth.gather import Evidence, Request
from filter_server.auth.service import Authenticator
from filter_server.engine.compiled import CompiledPolicy, Envelope
from mailwarden.filter.v1 import filter_pb2
from mailwarden.tokens import KeyRing, SigningKeyError, TokenInvalid, load_keyring, verify_token

# How often the key directory is looked at for a rotated key (a mounted Secret changes
# in place, through its ..data symlink).
KEY_RECHECK_SECONDS = 10.0


class KeyDirVerifier:
    """Verifies one-click tokens with the keys in a directory (current + previous),
    reloading them when the directory changes. Never raises to the caller. Keys that are
    not there yet (the store's Secret is created after the filter pods) are not an error:
    tokens are reported unchecked until they appear."""

    def __init__(self, directory: Path, log: logging.Logger) -> None:
        self.directory = directory
        self._log = log
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._keys: KeyRing | None = None
        self._stamp: tuple | None = self._fingerprint()
        try:
            self._keys = load_keyring(key_dir=directory)
        except SigningKeyError as exc:
            log.warning("no signing keys yet: one-click tokens are not checked until they "
                        "appear", extra={"dir": str(directory), "reason": str(exc)})

    @property
    def has_keys(self) -> bool:
        with self._lock:
            self._refresh()
            return self._keys is not None

    def _fingerprint(self) -> tuple:
        out: list[tuple] = []
        for name in ("..data", "current", "previous"):
            path = self.directory / name
            try:
                st = os.stat(path)
                out.append((name, st.st_mtime_ns, st.st_ino, os.path.realpath(path)))
            except OSError:
                out.append((name, None))
        return tuple(out)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < KEY_RECHECK_SECONDS:
            return
        self._checked = now
        stamp = self._fingerprint()
        if stamp == self._stamp:
            return
        try:
            self._keys = load_keyring(key_dir=self.directory)
            self._stamp = stamp
            self._log.info("signing keys reloaded", extra={"dir": str(self.directory)})
        except SigningKeyError as exc:  # keep the keys we had
            self._log.error("signing keys not reloaded", extra={"reason": str(exc)})

    def __call__(self, token: str) -> tuple[str, str] | None:
        with self._lock:
            self._refresh()
            keys = self._keys
        if keys is None:
            return None
        try:
            claims = verify_token(keys, token)
        except TokenInvalid:
            return None
        except Exception:  # a token format this version does not know: not valid here
            return None
        return claims.address, claims.scope


def make_authenticator(metrics: object, signing_key_dir: Path | None,
                       log: logging.Logger) -> Authenticator:
    verifier = KeyDirVerifier(signing_key_dir, log) if signing_key_dir is not None else None
    return Authenticator(metrics, verify_token=verifier)  # type: ignore[arg-type]


def gather_for(authenticator: Authenticator, policy: CompiledPolicy | None, raw: bytes,
               envelope: Envelope, mail_class: int, list_scope: str,
               deadline_left: float | None) -> Evidence | None:
    """What the engine needs from DNS for this message, or None when the policy does
    not authenticate."""
    if policy is None or not policy.auth.enabled:
        return None
    request = Request(raw=raw, mail_from=envelope.mail_from, helo=envelope.helo,
                      client_ip=envelope.client_ip,
                      bulk=policy.auth.bulk_gate and mail_class == filter_pb2.BULK,
                      recipients=envelope.recipients, list_scope=list_scope)
    return authenticator.gather(request, policy.auth, deadline_left)
