"""SMTP, for the end-to-end rows: messages submitted to a real Postfix whose milter is the
system under test. One connection per session, one transaction after another on it
(MAIL, RCPT, DATA), as a relay delivering a queue would; latency is the whole transaction,
so it includes the MTA's own work (queue file, milter round trips).

The verdict is the MTA's answer: a 5xx after DATA is a rejection (spam); 250 is accepted
(ham, tagged, or held: the SMTP client cannot tell). A 4xx is an error (filter deferred).
"""

from __future__ import annotations

import asyncio

from benchmarks.clients import ProtocolError, Verdict
from benchmarks.messages import Message

RCPT = "bob@test.example"


def dot_stuffed(raw: bytes) -> bytes:
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    text = b""
    while True:
        line = await reader.readline()
        if not line:
            raise ProtocolError("the MTA closed the connection")
        text += line
        if line[3:4] != b"-":
            return int(line[:3]), text


class SmtpSession:
    def __init__(self, client: "SmtpClient") -> None:
        self.client = client
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def _connect(self) -> None:
        reader, writer = await asyncio.open_connection(self.client.host, self.client.port)
        self.conn = (reader, writer)
        await self._expect(220)
        writer.write(b"EHLO loadgen.example\r\n")
        await self._expect(250)

    async def _expect(self, code: int) -> bytes:
        assert self.conn is not None
        got, text = await _reply(self.conn[0])
        if got != code:
            raise ProtocolError(f"MTA answered {text[:120]!r}, expected {code}")
        return text

    async def classify(self, message: Message) -> Verdict:
        if self.conn is None:
            await self._connect()
        assert self.conn is not None
        data = self.client.encoded.get(message.name)
        if data is None:
            data = self.client.encoded[message.name] = dot_stuffed(message.raw)
        reader, writer = self.conn
        try:
            writer.write(f"MAIL FROM:<{message.mail_from}>\r\n".encode())
            await self._expect(250)
            writer.write(f"RCPT TO:<{RCPT}>\r\n".encode())
            await self._expect(250)
            writer.write(b"DATA\r\n")
            await self._expect(354)
            writer.write(data)
            code, text = await _reply(reader)
        except BaseException:
            self._drop()
            raise
        if code == 250:
            return Verdict(False, float("nan"), "accepted")
        if 500 <= code < 600:
            return Verdict(True, float("nan"), "rejected")
        self._drop()
        raise ProtocolError(f"MTA deferred: {text[:160]!r}")

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None

    async def close(self) -> None:
        if self.conn is not None:
            self.conn[1].write(b"QUIT\r\n")
            self._drop()


class SmtpClient:
    def __init__(self, name: str, port: int, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host, self.port = host, port
        self.encoded: dict[str, bytes] = {}

    async def session(self) -> SmtpSession:
        return SmtpSession(self)

    async def close(self) -> None:
        return None
