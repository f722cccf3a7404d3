"""The spamd protocol against a real server, byte for byte where clients parse it, and its
answers to bad input. spamc and Exim themselves: tests/integration."""

from __future__ import annotations

import re
import socket
import threading
import time
import zlib

from testkit.protocols import HAM, TAGGED, connect, read_all
from tests.filter_server.protocols.conftest import IDLE_SECONDS, MAX_MESSAGE_BYTES


def ask(server, request: bytes, *, shut: bool = True) -> bytes:
    sock = connect(server.ports["spamd_port"])
    sock.sendall(request)
    if shut:
        sock.shutdown(socket.SHUT_WR)
    return read_all(sock)


def request(command: str, body: bytes, version: str = "1.5", **headers: str) -> bytes:
    head = f"{command} SPAMC/{version}\r\nContent-length: {len(body)}\r\n"
    head += "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def test_check_and_symbols(server):
    assert ask(server, request("CHECK", TAGGED)) == \
        b"SPAMD/1.5 0 EX_OK\r\nSpam: True ; 5.0 / 3.0\r\nContent-length: 0\r\n\r\n"
    reply = ask(server, request("SYMBOLS", TAGGED))
    assert reply.endswith(b"\r\n\r\nSUBJ_MONEY,BODY_VIAGRA")


def test_exim_style_report_spamc_1_2(server):
    """Exim sends `REPORT SPAMC/1.2` and parses the score/threshold at the body's start."""
    reply = ask(server, request("REPORT", TAGGED, version="1.2", User="nobody"))
    assert re.match(rb"SPAMD/1\.5 0 EX_OK\r\nContent-length: \d+\r\n\r\n5\.0/3\.0\r\n", reply)


def test_zlib_compressed_request(server):
    plain = ask(server, request("CHECK", HAM))
    assert ask(server, request("CHECK", zlib.compress(HAM), Compress="zlib")) == plain


def test_a_compression_bomb_stops_at_the_size_limit(server):
    bomb = zlib.compress(b"\r\n" * (MAX_MESSAGE_BYTES * 4))
    reply = ask(server, request("CHECK", bomb, Compress="zlib"))
    assert reply.startswith(b"SPAMD/1.5 65 EX_DATAERR mail filter: message decompresses to "
                            b"more than")


def test_tell_is_refused_and_unknown_commands_named(server):
    assert ask(server, request("TELL", HAM, Message_class="spam", Set="local")).startswith(
        b"SPAMD/1.5 69 EX_UNAVAILABLE TELL is not enabled")
    reply = ask(server, request("LEARN", HAM))
    assert reply.startswith(b"SPAMD/1.5 64 EX_USAGE unknown command 'LEARN'; supported: CHECK")


def test_without_content_length_the_message_ends_with_the_stream(server):
    """spamd reads to the client's half close when there is no Content-length; Haraka's
    spamassassin plugin relies on it (tests/integration/test_mta_haraka.py)."""
    for command in ("CHECK", "SYMBOLS", "HEADERS"):
        with_length = ask(server, request(command, TAGGED))
        assert ask(server, f"{command} SPAMC/1.4\r\nUser: default\r\n\r\n".encode()
                   + TAGGED) == with_length
    too_big = b"CHECK SPAMC/1.5\r\n\r\n" + HAM + b"x" * MAX_MESSAGE_BYTES
    assert ask(server, too_big).startswith(b"SPAMD/1.5 65 EX_DATAERR mail filter: message "
                                           b"is ")


def test_ping_and_skip(server):
    assert ask(server, b"PING SPAMC/1.5\r\n\r\n") == b"SPAMD/1.5 0 PONG\r\n"
    assert ask(server, b"SKIP SPAMC/1.5\r\n\r\n") == b""


def test_an_oversized_message_is_refused_before_it_is_sent(server):
    sock = connect(server.ports["spamd_port"])
    sock.sendall(f"CHECK SPAMC/1.5\r\nContent-length: {MAX_MESSAGE_BYTES + 1}\r\n\r\n"
                 .encode())  # and not one byte of it
    reply = read_all(sock)
    assert reply.startswith(b"SPAMD/1.5 65 EX_DATAERR mail filter: message is 200001 bytes")


def test_malformed_requests_get_ex_protocol(server):
    assert ask(server, b"HELLO THERE\r\n\r\n").startswith(
        b"SPAMD/1.5 76 EX_PROTOCOL not a spamd request line")
    assert ask(server, b"CHECK SPAMC/1.5\r\nContent-length: 12x\r\n\r\n" + HAM).startswith(
        b"SPAMD/1.5 76 EX_PROTOCOL malformed Content-length '12x'")
    assert ask(server, b"CHECK SPAMC/1.5\r\nCompress: zlib\r\n\r\n" + zlib.compress(HAM)
               ).startswith(b"SPAMD/1.5 76 EX_PROTOCOL CHECK with Compress: zlib needs a "
                            b"Content-length header")
    assert ask(server, b"CHECK SPAMC/1.5\r\nno colon here\r\n\r\n").startswith(
        b"SPAMD/1.5 76 EX_PROTOCOL malformed spamd header line")
    truncated = request("CHECK", HAM)[:-10]
    assert ask(server, truncated).startswith(
        b"SPAMD/1.5 76 EX_PROTOCOL connection closed in the middle of the message")


def test_a_stalled_client_times_out_while_others_are_served(server):
    stalled = connect(server.ports["spamd_port"], timeout=IDLE_SECONDS + 10)
    stalled.sendall(b"CHECK SPAMC/1.5\r\nContent-length: 500\r\n\r\nhalf")
    started = time.monotonic()
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(ask(server, request("CHECK", HAM))))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(answers) == 4 and time.monotonic() - started < IDLE_SECONDS
    reply = read_all(stalled)
    assert reply.startswith(b"SPAMD/1.5 76 EX_PROTOCOL nothing received for 1.5 s")
    assert time.monotonic() - started >= IDLE_SECONDS - 0.1


def test_request_headers_are_bounded(server):
    many = "".join(f"X-{i}: {'v' * 1000}\r\n" for i in range(20))
    reply = ask(server, f"CHECK SPAMC/1.5\r\n{many}\r\n".encode())
    assert reply.startswith(b"SPAMD/1.5 76 EX_PROTOCOL spamd request headers over 16384")
