"""Test certificates made with the `openssl` command line: a CA, and server/client
certificates it signs (EC P-256, valid two days)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cert:
    crt: Path
    key: Path

    def pem(self) -> tuple[bytes, bytes]:
        return self.crt.read_bytes(), self.key.read_bytes()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _key_args() -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def make_ca(directory: Path, name: str) -> Cert:
    directory.mkdir(parents=True, exist_ok=True)
    cert = Cert(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl("req", "-x509", *_key_args(), "-keyout", str(cert.key), "-out", str(cert.crt),
             "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert


def make_cert(directory: Path, name: str, ca: Cert, *, server: bool) -> Cert:
    cert = Cert(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    ext.write_text(("subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else "")
                   + f"extendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature\n")
    _openssl("req", *_key_args(), "-keyout", str(cert.key), "-out", str(csr),
             "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.crt), "-CAkey", str(ca.key),
             "-CAcreateserial", "-out", str(cert.crt), "-days", "2", "-extfile", str(ext))
    return cert
