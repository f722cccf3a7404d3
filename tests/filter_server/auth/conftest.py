"""The authentication tests' DNS: one Knot server per session serving the zones below, and
helpers to sign messages with the keys it publishes."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path
from typing import Iterator

import dkim
import dkim.canonicalization
import dkim.crypto
import pytest

from testkit.dns import DkimKey, KnotServer, Zone, dkim_key, knot_available

CLIENT_IP = "192.0.2.10"   # the "MTA client" every pass record allows (TEST-NET-1)
OTHER_IP = "198.51.100.7"  # a client no record allows


@pytest.fixture(scope="session")
def keys() -> dict[str, DkimKey]:
    return {name: dkim_key(selector, domain) for name, (selector, domain) in {
        "pass": ("sel", "pass.test"),
        "partner": ("sel", "example.org"),
        "forwarder": ("arc", "forwarder.test"),
        "list": ("arc", "list.test"),
        "bulk": ("mail", "news.test"),
        "other": ("sel", "other.test"),
    }.items()}


def zone_for(keys: dict[str, DkimKey]) -> Zone:
    z = Zone()
    # SPF outcomes
    z.txt("pass.test", f"v=spf1 ip4:{CLIENT_IP} -all")
    z.txt("fail.test", "v=spf1 -all")
    z.txt("softfail.test", "v=spf1 ~all")
    z.txt("neutral.test", "v=spf1 ?all")
    z.add("missing.test", "A", "192.0.2.99")
    z.txt("malformed.test", "v=spf1 ip4:999.1.1.1 -all")
    z.txt("loop.test", "v=spf1 include:loop.test -all")
    z.txt("twice.test", "v=spf1 -all").txt("twice.test", "v=spf1 +all")
    z.txt("incl.test", "v=spf1 include:pass.test -all")
    z.txt("mx.test", "v=spf1 mx -all").add("mx.test", "MX", "10 mail.mx.test.")
    z.add("mail.mx.test", "A", CLIENT_IP)
    z.txt("a.test", "v=spf1 a:host.a.test/24 -all").add("host.a.test", "A", "192.0.2.1")
    z.txt("void.test", "v=spf1 a:nx1.void.test a:nx2.void.test a:nx3.void.test -all")
    z.txt("macro.test", "v=spf1 exists:%{i}._spf.macro.test -all")
    z.add(f"{CLIENT_IP}._spf.macro.test", "A", "127.0.0.2")
    z.txt("redirect.test", "v=spf1 redirect=pass.test")
    z.txt("v6.test", "v=spf1 ip6:2001:db8::/32 -all")
    z.txt("mx1.pass.test", "v=spf1 a -all").add("mx1.pass.test", "A", CLIENT_IP)
    for i in range(12):  # a chain of includes one longer than the limit allows
        z.txt(f"t{i}.deep.test", f"v=spf1 include:t{i + 1}.deep.test -all")
    z.txt("t12.deep.test", f"v=spf1 ip4:{CLIENT_IP} -all")
    z.txt("short.test", f"v=spf1 ip4:{CLIENT_IP} -all", ttl=2)
    # DMARC
    z.txt("_dmarc.pass.test", "v=DMARC1; p=reject")
    z.txt("_dmarc.fail.test", "v=DMARC1; p=reject")
    z.txt("_dmarc.softfail.test", "v=DMARC1; p=quarantine")
    z.txt("_dmarc.neutral.test", "v=DMARC1; p=none")
    z.txt("_dmarc.malformed.test", "v=DMARC1; p=bogus")
    z.txt("_dmarc.example.org", "v=DMARC1; p=reject")
    z.txt("example.org", "v=spf1 ip4:192.0.2.50 -all")
    z.txt("_dmarc.news.test", "v=DMARC1; p=reject")
    z.txt("news.test", "v=spf1 -all")
    # DKIM and ARC keys
    for key in keys.values():
        z.txt(key.record_name, key.record)
    z.txt("bad._domainkey.pass.test", "v=DKIM1; k=rsa; p=notbase64!!")
    return z


@pytest.fixture(scope="session")
def knot(tmp_path_factory: pytest.TempPathFactory,
         keys: dict[str, DkimKey]) -> Iterator[KnotServer]:
    if not knot_available():
        pytest.fail("knotd is not installed: run scripts/bootstrap.sh (Debian package knot)")
    server = KnotServer(Path(tmp_path_factory.mktemp("knot")), zone_for(keys))
    with server:
        yield server


def message(from_addr: str = "ann@pass.test", subject: str = "hello",
            body: str = "Hi,\r\nsee you tomorrow.\r\n", extra: str = "") -> bytes:
    return (f"From: Ann <{from_addr}>\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Message-ID: <{hashlib.sha1(body.encode()).hexdigest()}@pass.test>\r\n"
            f"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n{extra}\r\n{body}").encode()


def sign(msg: bytes, key: DkimKey, headers: list[bytes] | None = None) -> bytes:
    include = headers or [b"from", b"to", b"subject", b"message-id", b"date"]
    signature = dkim.sign(msg, key.selector.encode(), key.domain.encode(), key.private_pem,
                          include_headers=include, canonicalize=(b"relaxed", b"relaxed"))
    return signature + msg


def sign_expired(msg: bytes, key: DkimKey) -> bytes:
    """A correct signature whose x= (expiry) passed a day ago."""
    signer = dkim.DKIM(msg)
    signer.signature_algorithm = b"rsa-sha256"
    signer.hasher = hashlib.sha256
    canon = dkim.canonicalization.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    include = [b"from", b"to", b"subject"]
    body_hash = base64.b64encode(hashlib.sha256(canon.canonicalize_body(signer.body)).digest())
    past = int(time.time()) - 2 * 86400  # dkimpy allows 10 h of clock skew
    fields = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"),
              (b"d", key.domain.encode()), (b"s", key.selector.encode()),
              (b"t", str(past).encode()), (b"x", str(past + 3600).encode()),
              (b"h", b" : ".join(include)), (b"bh", body_hash), (b"b", b"0" * 60)]
    header = signer.gen_header(fields, include, canon, b"DKIM-Signature",
                               dkim.crypto.parse_pem_private_key(key.private_pem))
    return b"DKIM-Signature: " + header + msg


def arc_seal(msg: bytes, key: DkimKey, authserv_id: str, results: str) -> bytes:
    """What a forwarder does: record what it verified (Authentication-Results), then add
    the next ARC set."""
    with_results = f"Authentication-Results: {authserv_id}; {results}\r\n".encode() + msg
    arc_headers = dkim.arc_sign(with_results, key.selector.encode(), key.domain.encode(),
                                key.private_pem, authserv_id.encode())
    return b"".join(arc_headers) + with_results
