"""Rspamd's protocol (HTTP /checkv2 and the legacy RSPAMC lines) against a real server,
and its answers to bad input. rspamc and Exim themselves: tests/integration."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time

from testkit.protocols import HAM, REJECT_REASON, REJECTED, TAGGED, connect, read_all
from tests.filter_server.protocols.conftest import IDLE_SECONDS, MAX_MESSAGE_BYTES


def conn(server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.ports["rspamd_port"], timeout=10)


def check(connection: http.client.HTTPConnection, raw: bytes, **headers: str):
    connection.request("POST", "/checkv2", body=raw, headers=headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_checkv2_reply_and_keep_alive(server):
    connection = conn(server)
    status, result = check(connection, TAGGED, From="<a@example.com>",
                           Rcpt="<bob@test.example>", IP="192.0.2.1", Helo="mx.example",
                           **{"Queue-Id": "ABC123", "Settings-ID": "x"})
    assert status == 200
    assert result["action"] == "add header" and result["score"] == 5.0
    assert set(result["symbols"]) == {"SUBJ_MONEY", "BODY_VIAGRA"}
    assert result["symbols"]["BODY_VIAGRA"]["description"] == "pills"
    assert result["milter"]["add_headers"]["X-Spam-Flag"] == "YES"
    sock = connection.sock
    status, result = check(connection, REJECTED)  # the same connection
    assert connection.sock is sock
    assert result["action"] == "reject"
    assert result["messages"] == {"smtp_message": REJECT_REASON}


def test_forged_headers_are_listed_for_removal(server):
    status, result = check(conn(server), b"X-Spam-Flag: NO\r\n" + HAM)
    assert result["milter"]["remove_headers"] == {"X-Spam-Flag": 0}


def test_chunked_body(server):
    sock = connect(server.ports["rspamd_port"])
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (TAGGED[:40], TAGGED[40:]))
    sock.sendall(b"POST /checkv2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Connection: close\r\n\r\n" + chunks + b"0\r\n\r\n")
    reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["action"] == "add header"


def test_ping_and_what_is_not_served(server):
    connection = conn(server)
    connection.request("GET", "/ping")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"pong\r\n")
    connection.request("POST", "/learnspam", body=HAM)
    response = connection.getresponse()
    assert response.status == 404 and b"no learning" in response.read()
    connection = conn(server)
    connection.request("POST", "/checkv2", body=HAM, headers={"Compression": "zstd"})
    assert connection.getresponse().status == 415
    connection = conn(server)
    connection.request("PUT", "/checkv2", body=HAM)
    assert connection.getresponse().status == 405


def test_rspamd_proxy_style_request(server):
    """Rspamd's milter proxy sends GET with a body, the client IP with its port, and
    Flags: milter,body_block (seen from the real proxy, tests/integration)."""
    connection = conn(server)
    connection.request("GET", "/checkv2", body=TAGGED, headers={
        "IP": "127.0.0.1:58658", "Flags": "milter,body_block", "Queue-ID": "E24B39FFF43",
        "From": "<alice@example.com>", "Rcpt": "<bob@test.example>", "Mailer": "virtual"})
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["action"] == "add header"


def test_exim_legacy_protocol(server):
    """Exim's variant=rspamd speaks RSPAMC/1.3 and sscanf()s the first two lines."""
    sock = connect(server.ports["rspamd_port"])
    sock.sendall(b"CHECK RSPAMC/1.3\r\nContent-length: %d\r\nQueue-Id: 1x\r\nFrom: <a@b.c>\r\n"
                 b"Recipient-Number: 1\r\nRcpt: <bob@test.example>\r\nHelo: h\r\n"
                 b"IP: 127.0.0.1\r\n\r\n" % len(TAGGED) + TAGGED)
    reply = read_all(sock)  # closed after the answer: Exim reads to the end
    assert re.match(rb"RSPAMD/1\.3 0 EX_OK\r\nMetric: default; True; 5\.00 / 3\.00 / 15\.00"
                    rb"\r\nAction: add header\r\n", reply), reply


def test_bad_input_gets_a_clear_http_error(server):
    for request, status, text in [
        (b"NONSENSE\r\n\r\n", b"400", b"not an HTTP/1.x or RSPAMC request line"),
        (b"POST /checkv2 HTTP/1.1\r\nbroken header\r\n\r\n", b"400", b"malformed request header"),
        (b"POST /checkv2 HTTP/1.1\r\n\r\n", b"400", b"needs Content-Length or chunked"),
        (b"POST /checkv2 HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort", b"400",
         b"connection closed in the middle of the message"),
        (b"POST /checkv2 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_MESSAGE_BYTES + 1),
         b"413", b"message is 200001 bytes"),
    ]:
        sock = connect(server.ports["rspamd_port"])
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = read_all(sock)
        assert reply.startswith(b"HTTP/1.1 " + status) and text in reply, (request, reply)


def test_a_stalled_client_gets_408_while_others_are_served(server):
    stalled = connect(server.ports["rspamd_port"], timeout=IDLE_SECONDS + 10)
    stalled.sendall(b"POST /checkv2 HTTP/1.1\r\nContent-Length: 500\r\n\r\nhalf")
    started = time.monotonic()
    for _ in range(3):
        assert check(conn(server), HAM)[0] == 200
    assert time.monotonic() - started < IDLE_SECONDS
    reply = read_all(stalled)
    assert reply.startswith(b"HTTP/1.1 408") and b"nothing received for 1.5 s" in reply
