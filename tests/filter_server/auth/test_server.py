"""Authentication in the real filter server process, resolving through the test's Knot
server: the Authentication-Results header in the response, TEMPERROR (not an error) when
DNS is dead, the metrics, and allow lists that match only authenticated senders."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import yaml

from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from mailwarden_local.corpus import DEFAULT_CORPUS
from testkit.dns import DkimKey, KnotServer, SilentServer
from testkit.filter import write_policy
from tests.filter_server.auth.conftest import CLIENT_IP, message, sign

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_POLICY = ROOT / "examples" / "spampolicy.yaml"


def example_policy(dns_server: str, **dns: object) -> dict:
    """The example policy, resolving through `dns_server`, without its model (the model
    only adds its score; authentication and lists are what is tested here)."""
    policy = yaml.safe_load(EXAMPLE_POLICY.read_text())["spec"]["policy"]
    policy.pop("model", None)
    policy["authentication"]["dns"] = {"servers": [dns_server], **dns}
    return policy


def classify(server, raw: bytes, *, ip: str = "", mail_from: str = "", helo: str = "",
             timeout: float = 10) -> filter_pb2.ClassifyResponse:
    with grpc.insecure_channel(server.address) as channel:
        return filter_pb2_grpc.FilterStub(channel).Classify(
            filter_pb2.ClassifyRequest(
                request_id="auth", message=raw,
                envelope=filter_pb2.Envelope(mail_from=mail_from, client_ip=ip, helo=helo,
                                             recipients=["bob@example.net"])),
            timeout=timeout)


def hit_names(response: filter_pb2.ClassifyResponse) -> set[str]:
    return {h.name for h in response.hits}


def test_response_carries_authentication_results(tmp_path: Path, servers, knot: KnotServer,
                                                 keys: dict[str, DkimKey]) -> None:
    write_policy(tmp_path / "policy", example_policy(knot.address))
    server = servers(tmp_path / "policy").wait_serving()
    raw = sign(message("ann@pass.test"), keys["pass"])
    response = classify(server, raw, ip=CLIENT_IP, mail_from="ann@pass.test",
                        helo="mx1.pass.test")
    assert {"SPF_PASS", "SPF_HELO_PASS", "DKIM_VALID", "DKIM_VALID_AU",
            "DMARC_PASS"} <= hit_names(response)
    header = response.authentication_results
    assert header.startswith("mx.example.com;")
    for part in ("spf=pass", "smtp.mailfrom=ann@pass.test", "dkim=pass header.d=pass.test",
                 "dmarc=pass"):
        assert part in header, header
    forged = classify(server, message("ceo@pass.test", body="wire money\r\n"),
                      ip="198.51.100.7", mail_from="ceo@pass.test")
    assert {"SPF_FAIL", "DMARC_REJECT", "DKIM_NONE"} <= hit_names(forged)
    assert forged.score > response.score
    assert server.metric("mailwarden_filter_dns_lookups_total", outcome="ok") > 0
    assert server.metric("mailwarden_filter_dns_lookups_total", outcome="cached") > 0


def test_dead_dns_answers_temperror_in_time(tmp_path: Path, servers,
                                            keys: dict[str, DkimKey]) -> None:
    with SilentServer() as dead:
        write_policy(tmp_path / "policy", example_policy(dead.address, timeoutSeconds=0.3,
                                                         budgetSeconds=0.5))
        server = servers(tmp_path / "policy").wait_serving()
        raw = sign(message("ann@pass.test"), keys["pass"])
        took = []
        for _ in range(8):
            started = time.monotonic()
            response = classify(server, raw, ip=CLIENT_IP, mail_from="ann@pass.test",
                                timeout=5)
            took.append(time.monotonic() - started)
            assert {"SPF_TEMPERROR", "DKIM_TEMPERROR", "DMARC_TEMPERROR"} <= \
                hit_names(response)
            assert "spf=temperror" in response.authentication_results
        assert dead.received > 0
    assert max(took) < 1.0, took
    assert server.metric("mailwarden_filter_auth_temperrors_total", method="spf") == 8
    assert server.metric("mailwarden_filter_dns_lookups_total", outcome="timeout") > 0


def test_short_call_deadline_is_kept(tmp_path: Path, servers) -> None:
    with SilentServer() as dead:
        write_policy(tmp_path / "policy", example_policy(dead.address, timeoutSeconds=5,
                                                         budgetSeconds=10))
        server = servers(tmp_path / "policy").wait_serving()
        started = time.monotonic()
        response = classify(server, message("ann@pass.test"), ip=CLIENT_IP,
                            mail_from="ann@pass.test", timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert "SPF_TEMPERROR" in hit_names(response)


# --- issue 20 item 7: allow lists match what is authenticated ---------------------------
PARTNER = "partner@example.org"  # the example policy allow-lists example.org


def _spam_sample(count: int) -> list[bytes]:
    spam_dir = DEFAULT_CORPUS / "spam-2"
    if not spam_dir.is_dir():
        pytest.skip(f"SpamAssassin corpus not in {DEFAULT_CORPUS}; scripts/bootstrap.sh")
    out = []
    for path in sorted(spam_dir.iterdir())[:count]:
        out.append(path.read_bytes())
    return out


def _rewrite_from(raw: bytes, address: str) -> bytes:
    head, sep, body = raw.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(b"from:")]
    return b"\n".join([f"From: {address}".encode()] + lines) + sep + body


def test_forged_from_of_an_allow_listed_partner_is_not_allowed(
        tmp_path: Path, servers, knot: KnotServer, keys: dict[str, DkimKey]) -> None:
    """Before: 50 of 50 spam became ACCEPT with From rewritten to the allow-listed domain
    (lists matched the unauthenticated From header)."""
    write_policy(tmp_path / "policy", example_policy(knot.address))
    server = servers(tmp_path / "policy").wait_serving()
    spam = _spam_sample(50)
    accepted_by_allowlist = 0
    for raw in spam:
        forged = classify(server, _rewrite_from(raw, PARTNER), ip="198.51.100.7",
                          mail_from=PARTNER)
        names = hit_names(forged)
        assert not {n for n in names if n.startswith("ALLOWLIST_")}, names
        assert "DMARC_REJECT" in names  # example.org publishes p=reject
        if forged.action == filter_pb2.ACCEPT and forged.score < -50:
            accepted_by_allowlist += 1
    assert accepted_by_allowlist == 0
    # The partner's real mail — DKIM-signed by example.org, or from its SPF-listed
    # server — is still allow-listed.
    signed = sign(message(PARTNER, body="Quarterly report attached.\r\n"), keys["partner"])
    response = classify(server, signed)
    assert "ALLOWLIST_DOMAIN" in hit_names(response)
    assert response.action == filter_pb2.ACCEPT
    via_spf = classify(server, message(PARTNER), ip="192.0.2.50", mail_from=PARTNER)
    assert "ALLOWLIST_DOMAIN" in hit_names(via_spf)


def test_opting_into_unauthenticated_matching(tmp_path: Path, servers) -> None:
    policy = {"lists": {"allow": {"domains": ["example.org"],
                                  "matchUnauthenticated": True}}}
    write_policy(tmp_path / "policy", policy)
    server = servers(tmp_path / "policy").wait_serving()
    response = classify(server, message(PARTNER))
    assert "ALLOWLIST_DOMAIN" in hit_names(response)
    assert response.authentication_results == ""  # authentication is off
