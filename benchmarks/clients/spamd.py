"""The spamd protocol (SPAMC/1.5) over asyncio streams, as `spamc -c` speaks it.

One request per connection (spamd closes after answering):

    CHECK SPAMC/1.5\\r\\nContent-length: N\\r\\n\\r\\n<message>
    -> SPAMD/1.1 0 EX_OK\\r\\nSpam: True ; 15.3 / 5.0\\r\\n\\r\\n

The verdict is spamd's own `Spam: True|False` (score >= required_score, 5.0 by default).
"""

from __future__ import annotations

import asyncio
import re

from benchmarks.clients import ProtocolError, Verdict
from benchmarks.messages import Message

_STATUS = re.compile(rb"^SPAMD/\d+\.\d+ (\d+) (\S+)")
_SPAM = re.compile(rb"^Spam: (True|False|Yes|No) ; (-?[\d.]+) / (-?[\d.]+)", re.I | re.M)


def build_request(message: Message) -> bytes:
    return (b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(message.raw)) + message.raw


def parse_response(data: bytes) -> Verdict:
    status = _STATUS.match(data)
    if not status:
        raise ProtocolError(f"not a spamd response: {data[:80]!r}")
    if status.group(1) != b"0":
        raise ProtocolError(f"spamd error {status.group(1).decode()} "
                            f"{status.group(2).decode()}")
    spam = _SPAM.search(data)
    if not spam:
        raise ProtocolError(f"spamd response without a Spam header: {data[:120]!r}")
    flag = spam.group(1).lower() in (b"true", b"yes")
    return Verdict(flag, float(spam.group(2)), "True" if flag else "False")


class SpamdSession:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    async def classify(self, message: Message) -> Verdict:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(build_request(message))
            await writer.drain()
            data = await reader.read()  # spamd closes the connection after its answer
        finally:
            writer.close()
        return parse_response(data)

    async def close(self) -> None:
        return None


class SpamdClient:
    name = "SpamAssassin"

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port

    async def session(self) -> SpamdSession:
        return SpamdSession(self.host, self.port)

    async def close(self) -> None:
        return None
