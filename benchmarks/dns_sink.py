"""A loopback DNS "server" that answers every query SERVFAIL at once and counts queries.

There is no network here. Pointing the peers' resolvers at this sink means that a DNS
lookup we failed to switch off can never stall a scan (an unreachable resolver would cost
a timeout per lookup), and the count shows in the report whether any lookup happened.
SERVFAIL is what a resolver without upstream answers: "could not find out", which checks
treat as a temporary failure rather than as evidence (NXDOMAIN would claim the sender's
domain does not exist).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import Counter


class DnsSink:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.queries = 0
        self.names: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-sink", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def snapshot(self) -> int:
        with self._lock:
            return self.queries

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = servfail_reply(query)
            if reply is None:
                continue
            with self._lock:
                self.queries += 1
                name = question_name(query)
                if name:
                    self.names[name] += 1
            try:
                self._sock.sendto(reply, peer)
            except OSError:
                pass

    def __enter__(self) -> "DnsSink":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


def servfail_reply(query: bytes) -> bytes | None:
    """The query echoed back as a response with RCODE 2 (SERVFAIL), or None if malformed."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000:  # already a response
        return None
    opcode_rd = flags & 0x7900  # keep opcode and RD
    reply_flags = 0x8000 | opcode_rd | 0x0080 | 2  # QR, RA, SERVFAIL
    # Keep the header's question section only (no answers, authority or additional).
    end = _question_end(query, qdcount)
    if end is None:
        return None
    return struct.pack("!HHHHHH", ident, reply_flags, qdcount, 0, 0, 0) + query[12:end]


def _question_end(query: bytes, qdcount: int) -> int | None:
    pos = 12
    for _ in range(qdcount):
        while True:
            if pos >= len(query):
                return None
            length = query[pos]
            if length & 0xC0:
                pos += 2
                break
            pos += 1 + length
            if length == 0:
                break
        pos += 4  # QTYPE, QCLASS
    return pos if pos <= len(query) else None


def question_name(query: bytes) -> str:
    labels, pos = [], 12
    while pos < len(query):
        length = query[pos]
        if length == 0 or length & 0xC0:
            break
        labels.append(query[pos + 1:pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    return ".".join(labels)
