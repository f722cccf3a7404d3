"""Rspamd's HTTP protocol: `POST /checkv2` with the raw message, JSON answer.

A session keeps one HTTP/1.1 connection alive (reconnecting if Rspamd closes it). The
envelope goes in Rspamd's request headers `From` and `Rcpt`; no `IP`, `Helo` or `Hostname`
(see benchmarks/messages.py).

The verdict: spam when the action is `add header`, `rewrite subject` or `reject` (score at
or above the add_header threshold, 6 by default). `no action` and `greylist` (a temporary
deferral of a suspicious message, not a spam mark) are ham; so is `soft reject`.
"""

from __future__ import annotations

import asyncio
import json

from benchmarks.clients import ProtocolError, Verdict
from benchmarks.messages import Message

SPAM_ACTIONS = frozenset({"add header", "rewrite subject", "reject"})


def build_request(message: Message, host: str) -> bytes:
    head = [b"POST /checkv2 HTTP/1.1", b"Host: " + host.encode(),
            b"Content-Length: %d" % len(message.raw), b"Connection: keep-alive"]
    if message.mail_from:
        head.append(b"From: " + message.mail_from.encode())
    if message.rcpt:
        head.append(b"Rcpt: " + message.rcpt.encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + message.raw


def parse_result(body: bytes) -> Verdict:
    try:
        result = json.loads(body)
        action = result["action"]
        score = float(result["score"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"unreadable /checkv2 answer ({exc}): {body[:120]!r}") from None
    return Verdict(action in SPAM_ACTIONS, score, action, len(result.get("symbols") or ()))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ProtocolError(f"not an HTTP response: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return int(parts[1]), headers, body


class RspamdSession:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.connects = 0

    async def classify(self, message: Message) -> Verdict:
        request = build_request(message, self.host)
        for attempt in (1, 2):
            fresh = self._conn is None
            if fresh:
                self._conn = await asyncio.open_connection(self.host, self.port)
                self.connects += 1
            reader, writer = self._conn
            try:
                writer.write(request)
                await writer.drain()
                status, headers, body = await read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                # A kept-alive connection the server closed meanwhile: retry once, fresh.
                self._drop()
                if fresh or attempt == 2:
                    raise
                continue
            except BaseException:
                # timeout or cancellation mid-response: the connection is out of step
                self._drop()
                raise
            if headers.get("connection", "").lower() == "close":
                self._drop()
            if status != 200:
                raise ProtocolError(f"Rspamd answered HTTP {status}: {body[:120]!r}")
            return parse_result(body)
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    async def close(self) -> None:
        self._drop()


class RspamdClient:
    name = "Rspamd"

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port

    async def session(self) -> RspamdSession:
        return RspamdSession(self.host, self.port)

    async def close(self) -> None:
        return None
