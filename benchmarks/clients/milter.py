"""The milter protocol as Postfix speaks it, for load: one connection per session (Postfix
keeps one per SMTP session), negotiated once with every option Postfix 3.7 offers, so the
filter asks for no reply to connect, HELO, envelope, headers and body — only end of
message is waited for, as from Postfix.

The verdict: rejected (SMFIR_REPLYCODE 5xx) or quarantined (SMFIR_QUARANTINE) is spam,
and so is a delivered message whose added X-Spam-Flag header says YES.
"""

from __future__ import annotations

import asyncio
import struct

from benchmarks.clients import ProtocolError, Verdict
from benchmarks.messages import Message

CHUNK = 65535  # Postfix's body chunk
ACTIONS = 0x1FF
PROTOCOL = 0x1FFFFF & ~0x400  # everything Postfix offers but SKIP
FINAL = {b"c", b"a", b"r", b"t", b"y", b"d"}


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


def encode(message: Message) -> list[bytes]:
    """The packets of one message: (events that get no reply, end of message)."""
    head, sep, body = message.raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = message.raw.partition(b"\n\n")
    out = [packet(b"M", f"<{message.mail_from}>".encode() + b"\0"),
           packet(b"R", f"<{message.rcpt or 'bob@test.example'}>".encode() + b"\0")]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    fields: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        elif b":" in line:
            fields.append(line)
    for field in fields:
        name, _, value = field.partition(b":")
        out.append(packet(b"L", name + b"\0" + value + b"\0"))
    out.append(packet(b"N"))
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for i in range(0, len(body), CHUNK):
        out.append(packet(b"B", body[i:i + CHUNK]))
    out.append(packet(b"E"))
    return [b"".join(out)]


class MilterSession:
    def __init__(self, client: "MilterClient") -> None:
        self.client = client
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.no_reply = False

    async def _packet(self) -> tuple[bytes, bytes]:
        assert self.conn is not None
        reader = self.conn[0]
        (length,) = struct.unpack("!I", await reader.readexactly(4))
        data = await reader.readexactly(length)
        return data[:1], data[1:]

    async def _connect(self) -> None:
        self.conn = await asyncio.open_connection(self.client.host, self.client.port)
        self.conn[1].write(packet(b"O", struct.pack("!III", 6, ACTIONS, PROTOCOL)))
        command, data = await self._packet()
        if command != b"O":
            raise ProtocolError(f"milter negotiation answered {command!r}")
        protocol = struct.unpack("!III", data[:12])[2]
        if protocol & 0x80 == 0:
            raise ProtocolError("the filter wants replies to headers; this client does not")
        self.conn[1].write(packet(b"C", b"client.example\x004\x30\x39127.0.0.1\x00")
                           + packet(b"H", b"client.example\x00"))

    async def classify(self, message: Message) -> Verdict:
        if self.conn is None:
            await self._connect()
        assert self.conn is not None
        encoded = self.client.encoded.get(message.name)
        if encoded is None:
            encoded = self.client.encoded[message.name] = encode(message)
        try:
            self.conn[1].write(encoded[0])
            await self.conn[1].drain()
            spam = False
            while True:
                command, data = await self._packet()
                if command == b"h" and data.startswith(b"X-Spam-Flag\0"):
                    spam = b"YES" in data
                elif command == b"q":
                    spam = True
                if command in FINAL:
                    break
        except BaseException:
            self._drop()
            raise
        if command == b"y":
            if data[:1] == b"4":
                raise ProtocolError(f"milter tempfail: {data[:120]!r}")
            return Verdict(True, float("nan"), "reject")
        return Verdict(spam, float("nan"), "quarantine" if command == b"q" else
                       ("spam" if spam else "ham"))

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None

    async def close(self) -> None:
        if self.conn is not None:
            self.conn[1].write(packet(b"Q"))
            self._drop()


class MilterClient:
    name = "Mailwarden (milter)"

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.encoded: dict[str, list[bytes]] = {}

    async def session(self) -> MilterSession:
        return MilterSession(self)

    async def close(self) -> None:
        return None
