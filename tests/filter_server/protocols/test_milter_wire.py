"""The milter wire protocol against a real server, as an MTA speaks it — including the
ways an MTA-side peer can misbehave. Postfix itself: tests/integration/test_mta_postfix.py."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from testkit.filter import wait_for
from testkit.processes import free_port
from testkit.protocols import (
    HAM,
    HELD,
    REJECT_REASON,
    REJECTED,
    TAGGED,
    MilterClient,
    connect,
    milter_packet,
    protocol_policy,
    read_milter_packet,
    start_server,
)
from tests.filter_server.protocols.conftest import IDLE_SECONDS, MAX_MESSAGE_BYTES


def headers_added(replies: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out = {}
    for command, data in replies:
        if command == b"h":
            name, value, _ = data.split(b"\0")
            out[name.decode()] = value.decode()
    return out


@pytest.fixture
def milter(server):
    clients: list[MilterClient] = []

    def open_session(**kwargs) -> MilterClient:
        client = MilterClient(server.ports["milter_port"], **kwargs)
        clients.append(client)
        return client

    yield open_session
    for client in clients:
        client.close()


def test_negotiation_asks_only_for_what_it_uses(milter):
    client = milter(protocol=0)
    assert client.version == 6
    # add headers, change headers (to drop forged copies), delete recipients, quarantine
    assert client.actions == 0x01 | 0x10 | 0x08 | 0x20
    assert client.protocol == 0  # nothing offered, nothing taken: every event is answered
    assert client.ask(b"C", b"h\x004\x30\x39127.0.0.1\x00") == (b"c", b"")


def test_no_reply_events_when_the_mta_offers_them(milter):
    client = milter(protocol=0x1FFFFF)
    assert client.protocol & 0x80  # SMFIP_NR_HDR: headers are not answered one by one
    client.send(b"M", b"<a@example.com>\x00")
    client.send(b"L", b"Subject\x00 hello\x00")
    client.send(b"N")
    client.send(b"B", b"Shall we meet at noon?\r\n")
    client.send(b"E")
    replies = [read_milter_packet(client.sock) for _ in range(6)]  # 5 headers, continue
    assert [command for command, _ in replies] == [b"h"] * 5 + [b"c"]


@pytest.mark.parametrize("raw, flag, action", [(HAM, "NO", "accept"), (TAGGED, "YES", "tag")])
def test_delivered_mail_gets_headers_with_the_hits(milter, raw, flag, action):
    replies = milter().message(raw)
    assert replies[-1] == (b"c", b"")
    added = headers_added(replies)
    assert added["X-Spam-Flag"].strip() == flag
    assert added["X-Spam-Action"].strip() == action
    results = added["Authentication-Results"]
    assert results.strip().startswith("mailwarden; x-mailwarden=")
    if raw is TAGGED:
        assert "policy.hits=SUBJ_MONEY,BODY_VIAGRA" in results


def test_quarantine_holds_and_reject_refuses_with_the_policy_text(milter):
    client = milter()
    held = client.message(HELD)
    assert (b"q", b"Message held for review as suspected spam\0") in held
    assert held[-1] == (b"c", b"")
    rejected = client.message(REJECTED)  # the same session, the next message
    assert rejected == [(b"y", f"550 5.7.1 {REJECT_REASON}".encode() + b"\0")]


def test_forged_headers_of_ours_are_removed(milter):
    forged = HAM.replace(b"Subject:", b"X-Spam-Flag: NO\r\nAuthentication-Results: "
                         b"mailwarden; x-mailwarden=pass\r\nSubject:")
    replies = milter().message(forged)
    removed = [data for command, data in replies if command == b"m"]
    assert removed == [struct.pack("!I", 1) + b"X-Spam-Flag\0\0",
                       struct.pack("!I", 1) + b"Authentication-Results\0\0"]


def test_abort_gives_back_the_message_and_the_session_goes_on(milter, server):
    client = milter()
    client.ask(b"M", b"<a@example.com>\x00")
    client.ask(b"L", b"Subject\x00 half a message\x00")
    client.send(b"A")  # RSET: the message is dropped, no reply
    assert client.message(HAM)[-1] == (b"c", b"")
    wait_for(lambda: server.metric("mailwarden_filter_memory_reserved_bytes") == 0, 5,
             "the aborted message's memory to be given back")


def test_a_message_over_the_size_limit_is_refused_permanently(milter):
    client = milter()
    client.ask(b"M", b"<a@example.com>\x00")
    client.ask(b"L", b"Subject\x00 big\x00")
    client.ask(b"N")
    chunk = b"x" * 60_000 + b"\r\n"
    for _ in range(MAX_MESSAGE_BYTES // len(chunk) + 2):
        assert client.ask(b"B", chunk) == (b"c", b"")
    command, data = client.ask(b"E")
    assert command == b"y" and data.startswith(b"552 5.3.4 mail filter: message is"), data


# --- bad input: a clear end for the offender, nothing for the others ---------------------------
def _closed_within(sock: socket.socket, seconds: float) -> float:
    started = time.monotonic()
    sock.settimeout(seconds)
    while sock.recv(65536):
        pass
    return time.monotonic() - started


def _other_session_works(server) -> None:
    client = MilterClient(server.ports["milter_port"])
    try:
        assert client.message(HAM)[-1] == (b"c", b"")
    finally:
        client.close()


def test_a_truncated_packet_ends_the_connection_not_the_server(server):
    before = server.metric("mailwarden_filter_protocol_errors_total", protocol="milter",
                           reason="truncated")
    sock = connect(server.ports["milter_port"])
    sock.sendall(struct.pack("!I", 100) + b"O" + b"\0" * 10)  # 11 of 104 bytes
    sock.shutdown(socket.SHUT_WR)
    assert _closed_within(sock, 5) < 5
    wait_for(lambda: server.metric("mailwarden_filter_protocol_errors_total",
                                   protocol="milter", reason="truncated") == before + 1,
             5, "the truncated packet to be counted")
    _other_session_works(server)


def test_an_absurd_packet_length_is_refused_before_reading(server):
    sock = connect(server.ports["milter_port"])
    sock.sendall(struct.pack("!I", 0x7FFFFFFF) + b"B")
    assert _closed_within(sock, 5) < 1
    assert "milter packet length 2147483647 is outside" in server.log()
    _other_session_works(server)


def test_commands_before_negotiation_are_a_protocol_error(server):
    sock = connect(server.ports["milter_port"])
    sock.sendall(milter_packet(b"M", b"<a@example.com>\0"))
    assert _closed_within(sock, 5) < 1
    assert "before negotiation" in server.log()


def test_a_stalled_mta_and_one_that_never_sends_eom_are_cut_off(server):
    """Both hold the connection; a message that never ends also holds memory. Others are
    served meanwhile, and both are closed after the idle timeout, the memory given back."""
    stalled = connect(server.ports["milter_port"])
    stalled.sendall(struct.pack("!I", 13) + b"O\0\0")  # half a negotiation, then nothing
    no_eom = MilterClient(server.ports["milter_port"])
    no_eom.ask(b"M", b"<a@example.com>\x00")
    no_eom.ask(b"L", b"Subject\x00 never ends\x00")
    no_eom.ask(b"N")
    no_eom.ask(b"B", b"the body, and then silence\r\n")
    assert server.metric("mailwarden_filter_memory_reserved_bytes") > 0
    started = time.monotonic()
    served = []
    worker = threading.Thread(target=lambda: served.append(_other_session_works(server)))
    worker.start()
    worker.join(10)
    assert served == [None] and time.monotonic() - started < IDLE_SECONDS
    for sock in (stalled, no_eom.sock):
        assert _closed_within(sock, IDLE_SECONDS + 5) < IDLE_SECONDS + 5
    wait_for(lambda: server.metric("mailwarden_filter_memory_reserved_bytes") == 0, 5,
             "the unfinished message's memory to be given back")
    assert server.metric("mailwarden_filter_requests_total", method="milter",
                         code="CANCELLED") >= 1
    assert server.metric("mailwarden_filter_protocol_errors_total", protocol="milter",
                         reason="timeout") >= 2


def test_envelope_data_outside_the_memory_budget_is_bounded(milter, server):
    client = milter()
    client.ask(b"M", b"<a@example.com>\x00")
    client.send(b"R", b"<" + b"x" * 5000 + b"@example.com>\x00")
    assert _closed_within(client.sock, 5) < 5
    assert "an envelope address of 5014 bytes (at most 2048)" in server.log()


def test_a_slow_sender_holds_no_call_slot_and_spends_no_deadline(tmp_path):
    """An MTA relays a message at its sender's pace: the call slot and the deadline start
    at end of message. One slot and a 1 s deadline; two messages arriving over 2 s at once
    are both answered."""
    from testkit.protocols import start_server

    server = start_server(tmp_path, "--max-concurrent-rpcs", "1",
                          "--protocol-deadline-seconds", "1")
    try:
        clients = [MilterClient(server.ports["milter_port"]) for _ in range(2)]
        for client in clients:
            client.ask(b"M", b"<a@example.com>\x00")
            client.ask(b"L", b"Subject\x00 slow\x00")
            client.ask(b"N")
            client.ask(b"B", b"the first line\r\n")
        time.sleep(2)
        for client in clients:
            client.ask(b"B", b"and the last\r\n")
            assert read_replies_to_eom(client)[-1] == (b"c", b"")
            client.close()
        assert server.metric("mailwarden_filter_requests_total", method="milter",
                             code="OK") == 2
    finally:
        server.kill()


def read_replies_to_eom(client: MilterClient) -> list[tuple[bytes, bytes]]:
    client.send(b"E")
    replies = []
    while True:
        replies.append(read_milter_packet(client.sock))
        if replies[-1][0] in (b"c", b"a", b"r", b"t", b"y", b"d"):
            return replies


def test_sender_authentication_sees_the_smtp_envelope(tmp_path):
    """With the policy's `authentication` on, the milter hands the SMTP client's IP, HELO
    and MAIL FROM to it as Classify's envelope would, and its results join our header.
    DNS is a closed port here: every lookup fails at once, so SPF says temperror."""
    policy = protocol_policy()
    policy["authentication"] = {"enabled": True, "authservId": "mx.test.example",
                                "dns": {"servers": [f"127.0.0.1:{free_port()}"],
                                        "timeoutSeconds": 0.5, "budgetSeconds": 1}}
    server = start_server(tmp_path, policy=policy)
    try:
        client = MilterClient(server.ports["milter_port"])
        try:
            forged = HAM.replace(b"Subject:", b"Authentication-Results: mx.test.example; "
                                 b"spf=pass smtp.mailfrom=example.com\r\nSubject:")
            replies = client.message(forged)
        finally:
            client.close()
        results = headers_added(replies)["Authentication-Results"]
        assert results.strip().startswith("mailwarden; x-mailwarden=pass")
        assert "; spf=temperror" in results and "smtp.mailfrom=alice@example.com" in results
        removed = [data for command, data in replies if command == b"m"]
        assert removed == [struct.pack("!I", 1) + b"Authentication-Results\0\0"]
    finally:
        server.kill()
