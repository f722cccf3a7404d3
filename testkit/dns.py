"""A real authoritative DNS server for the authentication tests and benchmarks: Knot DNS
(Debian package `knot`, installed by scripts/bootstrap.sh) serving one root zone on a
loopback port, so every name the tests use — and every name they do not — has an
authoritative answer (anything not in the zone is NXDOMAIN with the root SOA, as for mail
from domains that no longer exist). Plus, for failure tests, a relay that delays every
answer (a slow server) and a socket that never answers (a dead one).

knotd runs as the current user on a high port; nothing needs privileges.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import dns.message
import dns.query

from mailwarden_local.processes import ServerProcess

KNOTD = "/usr/sbin/knotd"
KNOTC = "/usr/sbin/knotc"
SOA_MINIMUM = 60     # negative-answer TTL of the zone


def knot_available() -> bool:
    return Path(KNOTD).exists() and Path(KNOTC).exists()


def free_udp_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP (DNS listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


@dataclass
class Zone:
    """Records of the root zone: (owner, ttl, type, rdata) with owners relative to the root
    (no trailing dot needed)."""

    records: list[tuple[str, int, str, str]] = field(default_factory=list)

    def add(self, owner: str, rtype: str, rdata: str, ttl: int = 300) -> "Zone":
        self.records.append((owner.rstrip("."), ttl, rtype, rdata))
        return self

    def txt(self, owner: str, text: str, ttl: int = 300) -> "Zone":
        """A TXT record; long texts are split into 255-byte strings (one record)."""
        chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
        rdata = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"'
                         for c in chunks)
        return self.add(owner, "TXT", rdata, ttl)

    def text(self) -> str:
        lines = [
            "$ORIGIN .",
            f". 3600 IN SOA ns.test. hostmaster.test. {int(time.time())} 3600 600 86400 "
            f"{SOA_MINIMUM}",
            ". 3600 IN NS ns.test.",
            "ns.test. 3600 IN A 127.0.0.1",
        ]
        for owner, ttl, rtype, rdata in self.records:
            lines.append(f"{owner}. {ttl} IN {rtype} {rdata}")
        return "\n".join(lines) + "\n"


class KnotServer:
    """knotd serving `zone` as the root zone on 127.0.0.1:<port> (UDP and TCP)."""

    def __init__(self, workdir: Path, zone: Zone) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_tcp_port()
        self.zone = zone
        self.conf = workdir / "knot.conf"
        self.socket_path = workdir / "knot.sock"
        self.process: ServerProcess | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write(self) -> None:
        (self.workdir / "root.zone").write_text(self.zone.text())
        self.conf.write_text(f"""\
server:
    rundir: "{self.workdir}"
    listen: 127.0.0.1@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "{self.workdir}"
control:
    listen: "{self.socket_path}"
template:
  - id: default
    storage: "{self.workdir}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
  - domain: .
    file: root.zone
""")

    def start(self, timeout: float = 20.0) -> "KnotServer":
        self._write()
        self.process = ServerProcess("knotd", [KNOTD, "-c", str(self.conf)],
                                     log_path=self.workdir / "knotd.log")
        self.process.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.query("ns.test", "A").answer:
                    return self
            except (OSError, dns.exception.DNSException):
                pass
            if self.process.process is not None and self.process.process.poll() is not None:
                raise RuntimeError("knotd exited: " + self._log())
            if time.monotonic() > deadline:
                raise RuntimeError("knotd did not answer: " + self._log())
            time.sleep(0.05)

    def _log(self) -> str:
        try:
            return (self.workdir / "knotd.log").read_text()[-2000:]
        except OSError:
            return ""

    def query(self, name: str, rtype: str) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, rtype), "127.0.0.1", timeout=1,
                             port=self.port)

    def reload(self, zone: Zone | None = None) -> None:
        """Serve a changed zone (the SOA serial is the time, so wait a second between)."""
        if zone is not None:
            self.zone = zone
        (self.workdir / "root.zone").write_text(self.zone.text())
        subprocess.run([KNOTC, "-c", str(self.conf), "zone-reload", "."], check=True,
                       capture_output=True, timeout=20)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None

    def __enter__(self) -> "KnotServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SilentServer:
    """A dead DNS server: a UDP socket that takes queries and never answers (as a host
    that went away behind a firewall that drops packets), counting them."""

    thread_name = "dns-silent"

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=self.thread_name)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received += 1
            self._on_query(query, peer)

    def _on_query(self, query: bytes, peer: tuple) -> None:
        """Drop it: a dead server never answers."""

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class DelayRelay(SilentServer):
    """A slow DNS server: forwards each UDP query to `upstream` and answers after `delay`
    seconds (TCP is not relayed: the tests' answers fit in UDP)."""

    thread_name = "dns-delay"

    def __init__(self, upstream_port: int, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.upstream = ("127.0.0.1", upstream_port)

    def _on_query(self, query: bytes, peer: tuple) -> None:
        threading.Thread(target=self._answer, args=(query, peer), daemon=True).start()

    def _answer(self, query: bytes, peer: tuple) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(2)
            try:
                up.sendto(query, self.upstream)
                reply, _ = up.recvfrom(65535)
            except OSError:
                return
        if self._stop.wait(self.delay):
            return
        try:
            self.sock.sendto(reply, peer)
        except OSError:
            pass


# --- DKIM keys ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DkimKey:
    selector: str
    domain: str
    private_pem: bytes
    public_b64: str

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def record(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"


def dkim_key(selector: str, domain: str, bits: int = 1024) -> DkimKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return DkimKey(selector, domain, private, base64.b64encode(public).decode())


def which_dns_server() -> str | None:
    return KNOTD if knot_available() else shutil.which("knotd")
