"""gRPC TLS from a directory in the layout cert-manager writes into a Secret (and the
kubelet projects as files): tls.crt (certificate chain), tls.key (private key) and ca.crt.
A server needs ca.crt only for mutual TLS (the CA that signs client certificates); a client
needs ca.crt (the CA that signed the server) and, for mutual TLS, its own tls.crt and tls.key.
Shared by the filter server, the unsubscribe store and their clients.

Rotated certificates are picked up without a restart: gRPC asks `_Rotation.fetch` before each
new TLS handshake, and it re-reads the files when they changed (checked at most once a
second). Connections already open keep the certificate they were made with; the server's
maximum connection age makes clients reconnect, so rotation reaches everyone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import grpc

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
CHECK_INTERVAL_SECONDS = 1.0


class TlsConfigError(Exception):
    """The TLS directory is unusable; the message says which file and why."""


def _read(directory: Path, name: str) -> bytes:
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{path} is missing (expected {CERT_FILE}, {KEY_FILE} and, for "
                             f"client certificates, {CA_FILE})") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TlsConfigError(f"{path} is not PEM (no '-----BEGIN' line)")
    return data


class _Rotation:
    def __init__(self, directory: Path, require_client_cert: bool,
                 log: logging.Logger) -> None:
        self.directory = directory
        self.require_client_cert = require_client_cert
        self._log = log
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stamp = self._current_stamp()

    def _files(self) -> tuple[str, ...]:
        return (CERT_FILE, KEY_FILE, CA_FILE) if self.require_client_cert else \
            (CERT_FILE, KEY_FILE)

    def _current_stamp(self) -> tuple:
        stamp: list[tuple[int, int, int] | None] = []
        for name in self._files():
            try:
                st = os.stat(self.directory / name)  # follows the kubelet's ..data links
                stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        key, cert = _read(self.directory, KEY_FILE), _read(self.directory, CERT_FILE)
        ca = _read(self.directory, CA_FILE) if self.require_client_cert else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration, or None for 'same'."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < CHECK_INTERVAL_SECONDS:
                return None
            self._checked = now
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return None
            try:
                configuration = self.configuration()
            except TlsConfigError as exc:  # mid-rotation or broken: keep the old one
                self._log.warning("rotated TLS files not usable yet; keeping the previous "
                                  "certificate", extra={"reason": str(exc)})
                return None
            self._stamp = stamp
        self._log.info("TLS certificate reloaded", extra={"tls_dir": str(self.directory)})
        return configuration


def server_credentials(directory: Path, require_client_cert: bool,
                       log: logging.Logger) -> grpc.ServerCredentials:
    """Credentials for `server.add_secure_port`; raises TlsConfigError on unusable files."""
    check_tls_dir(directory, require_client_cert)
    rotation = _Rotation(directory, require_client_cert, log)
    initial = rotation.configuration()
    # gRPC takes None from `fetch` as "keep the current configuration"; its stubs say
    # the callback must always return one.
    return grpc.dynamic_ssl_server_credentials(
        initial, rotation.fetch,  # type: ignore[arg-type]
        require_client_authentication=require_client_cert)


def channel_credentials(directory: Path) -> grpc.ChannelCredentials:
    """Client credentials: ca.crt to verify the server, plus tls.crt and tls.key (a client
    certificate, for mutual TLS) when both are present. Raises TlsConfigError."""
    if not directory.is_dir():
        raise TlsConfigError(f"TLS directory {directory} is not a directory")
    ca = _read(directory, CA_FILE)
    if (directory / CERT_FILE).exists() or (directory / KEY_FILE).exists():
        return grpc.ssl_channel_credentials(ca, _read(directory, KEY_FILE),
                                            _read(directory, CERT_FILE))
    return grpc.ssl_channel_credentials(ca)


def check_tls_dir(directory: Path, require_client_cert: bool) -> None:
    """Raise TlsConfigError unless the files a worker will need are present and PEM."""
    if not directory.is_dir():
        raise TlsConfigError(f"--tls-dir {directory} is not a directory")
    for name in (CERT_FILE, KEY_FILE) + ((CA_FILE,) if require_client_cert else ()):
        _read(directory, name)
