"""Milter (the Sendmail/Postfix content-filter protocol, version 6), filter side.

Our own implementation of the wire protocol, not a library: pymilter wraps libmilter,
which owns the accept loop and a thread per connection in process-global state (one
milter per process, no say over admission or shutdown) and was last released in 2021;
purepythonmilter has one alpha release (2023); kilter.protocol (sans-IO, the closest fit)
is marked "Planning", asserts on malformed input and decodes macros as ASCII only, so a
hostile MTA-side peer could crash a session with an AssertionError or UnicodeDecodeError.
The protocol itself is small — a 4-byte length, a command byte, NUL-terminated strings —
and every command and reply used here is exercised by tests/filter_server/protocols
(framing, hostile input) and by a real Postfix (tests/integration/test_postfix_milter.py).

A session: the MTA negotiates (O), then per SMTP connection sends connect (C), HELO (H),
and per message MAIL (M), RCPT (R)..., headers (L), end of headers (N), body chunks (B)
and end of message (E); macros (D) may precede any of them; abort (A) ends a message
early, quit (Q) the connection, QUIT_NC (K) the SMTP connection only. We ask for no reply
to the events where the MTA allows that (fewer round trips) and decide at end of message:

  REJECT      -> 550 5.7.1 <mta.rejectReason>            (SMFIR_REPLYCODE)
  QUARANTINE  -> our headers, then hold the message       (SMFIR_QUARANTINE)
  TAG, ACCEPT -> our headers (X-Spam-*, Authentication-Results), continue
  refused     -> 451 4.7.1 (capacity, no policy, deadline) or 552 5.3.4 (too large)

plus, with `mta.removeSuppressedRecipients`, SMFIR_DELRCPT for each suppressed recipient.
Copies of our own headers already in the message are removed first (forgery).
"""

from __future__ import annotations

import logging
import struct

import grpc

from filter_server.engine.compiled import Envelope
from filter_server.protocols.server import (
    Classifier,
    Connection,
    ProtocolError,
    ProtocolMetrics,
)
from filter_server.protocols.verdict import (
    MtaOptions,
    Refusal,
    clean_text,
    mail_class_and_scope,
    refusal,
    result_headers,
)
from filter_server.server.servicer import Admission, LocalCall, Rejected
from mailwarden.filter.v1 import filter_pb2

VERSION = 6
# The largest packet accepted: body chunks are at most 64 KiB unless a larger size is
# negotiated (we never ask), headers at most Postfix's header_size_limit (100 KiB).
MAX_PACKET_BYTES = 1024 * 1024

# Commands (MTA -> filter)
ABORT, BODY, CONNECT, MACRO, EOM, HELO, QUIT_NC, HEADER, MAIL, EOH, OPTNEG, QUIT, RCPT, \
    DATA, UNKNOWN = (bytes([c]) for c in b"ABCDEHKLMNOQRTU")
# Replies (filter -> MTA)
ADDHEADER, CHGHEADER, DELRCPT, CONTINUE, QUARANTINE, REPLYCODE, TEMPFAIL = \
    b"h", b"m", b"-", b"c", b"q", b"y", b"t"

# Action flags (what the filter may do at end of message)
F_ADDHDRS, F_DELRCPT, F_CHGHDRS, F_QUARANTINE = 0x01, 0x08, 0x10, 0x20
WANTED_ACTIONS = F_ADDHDRS | F_DELRCPT | F_CHGHDRS | F_QUARANTINE
# Protocol flags: events we do not need, and events we need but need not answer.
P_NOUNKNOWN, P_NODATA, P_HDR_LEADSPC = 0x100, 0x200, 0x100000
NO_REPLY = {CONNECT: 0x1000, HELO: 0x2000, MAIL: 0x4000, RCPT: 0x8000, DATA: 0x10000,
            UNKNOWN: 0x20000, EOH: 0x40000, BODY: 0x80000, HEADER: 0x80}
WANTED_PROTOCOL = P_NOUNKNOWN | P_NODATA | P_HDR_LEADSPC | sum(NO_REPLY.values())
# Envelope data is kept outside the memory budget, so it is bounded here: an SMTP path is
# at most 256 octets (RFC 5321 4.5.3.1.3) and Postfix sends at most smtpd_recipient_limit
# (1000 by default) recipients per message.
MAX_ADDRESS_BYTES = 2048
MAX_RECIPIENTS = 10000
_LENGTH = struct.Struct("!I")
_NEGOTIATE = struct.Struct("!III")


def packet(command: bytes, data: bytes = b"") -> bytes:
    return _LENGTH.pack(len(data) + 1) + command + data


def cstrings(data: bytes) -> list[bytes]:
    """NUL-terminated strings (a missing final NUL is tolerated)."""
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return parts


def _bounded(arg: bytes) -> bytes:
    if len(arg) > MAX_ADDRESS_BYTES:
        raise ProtocolError(f"an envelope address of {len(arg)} bytes (at most "
                            f"{MAX_ADDRESS_BYTES})", "too_large")
    return arg


def address(arg: bytes) -> str:
    """An SMTP path as the MTA passed it (`<a@b>`), without the angle brackets."""
    text = arg.decode("utf-8", "replace").strip()
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text


async def read_packet(conn: Connection) -> tuple[bytes, bytes] | None:
    """(command, data) of the next packet; None when the MTA closed the connection between
    packets."""
    head = await _head(conn)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    if length == 0 or length > MAX_PACKET_BYTES:
        raise ProtocolError(f"milter packet length {length} is outside 1..{MAX_PACKET_BYTES}",
                            "too_large" if length else "malformed")
    body = await conn.exactly(length, "the rest of a milter packet")
    return body[:1], body[1:]


async def _head(conn: Connection) -> bytes | None:
    first = await conn._timed("the next milter packet", conn.reader.read(4))
    if not first:
        return None
    if len(first) < 4:
        first += await conn.exactly(4 - len(first), "a milter packet header")
    return first


class _Message:
    """What one message has sent so far, and what it holds of the worker's capacity."""

    def __init__(self) -> None:
        self.mail_from = ""
        self.recipients: list[bytes] = []
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.admission: Admission | None = None
        self.refused: Refusal | None = None


class MilterSession:
    def __init__(self, conn: Connection, classifier: Classifier, metrics: ProtocolMetrics,
                 log: logging.Logger) -> None:
        self.conn = conn
        self.classifier = classifier
        self.metrics = metrics
        self.log = log
        self.actions = 0
        self.protocol = 0
        self.negotiated = False
        self.client_ip = ""
        self.helo = ""
        self.queue_id = ""
        self.message = _Message()

    # --- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                got = await read_packet(self.conn)
                if got is None or got[0] == QUIT:
                    return
                command, data = got
                if not self.negotiated and command != OPTNEG:
                    raise ProtocolError(f"milter command {command!r} before negotiation")
                reply = await self.handle(command, data)
                if reply:
                    await self.conn.send(reply)
        finally:
            self._end_message()

    async def handle(self, command: bytes, data: bytes) -> bytes:
        if command == OPTNEG:
            return self.negotiate(data)
        if command == MACRO:
            self.macros(data)
            return b""
        if command == ABORT:  # the message is over (RSET, an SMTP-level rejection)
            self._end_message()
            return b""
        if command == QUIT_NC:  # a new SMTP connection follows on this one
            self._end_message()
            self.client_ip = self.helo = ""
            return b""
        if command == CONNECT:
            self.connect(data)
        elif command == HELO:
            self.helo = (cstrings(data) or [b""])[0].decode("utf-8", "replace")
        elif command == MAIL:
            self._end_message()
            args = cstrings(data)
            self.message.mail_from = address(_bounded(args[0])) if args else ""
        elif command == RCPT:
            args = cstrings(data)
            if args:
                if len(self.message.recipients) >= MAX_RECIPIENTS:
                    raise ProtocolError(f"more than {MAX_RECIPIENTS} recipients in one "
                                        "message", "too_large")
                self.message.recipients.append(_bounded(args[0]))
        elif command == HEADER:
            await self.header(data)
        elif command == BODY:
            await self.body(data)
        elif command == EOM:
            if data:
                await self.body(data)
            return await self.end_of_message()
        elif command not in (EOH, DATA, UNKNOWN):
            raise ProtocolError(f"unknown milter command {command!r}")
        return b"" if self.protocol & NO_REPLY.get(command, 0) else packet(CONTINUE)

    # --- events --------------------------------------------------------------------------
    def negotiate(self, data: bytes) -> bytes:
        if len(data) < _NEGOTIATE.size:
            raise ProtocolError(f"milter negotiation of {len(data)} bytes (needs 12)")
        version, actions, protocol = _NEGOTIATE.unpack_from(data)
        if version < 2:
            raise ProtocolError(f"milter protocol version {version} is too old (2..6)")
        self.actions = actions & WANTED_ACTIONS
        self.protocol = protocol & WANTED_PROTOCOL
        self.negotiated = True
        return packet(OPTNEG, _NEGOTIATE.pack(min(version, VERSION), self.actions,
                                              self.protocol))

    def macros(self, data: bytes) -> None:
        values = cstrings(data[1:])
        for name, value in zip(values[::2], values[1::2]):
            if name in (b"i", b"{i}"):
                self.queue_id = value.decode("ascii", "replace")[:64]

    def connect(self, data: bytes) -> None:
        parts = data.split(b"\0", 1)
        rest = parts[1] if len(parts) > 1 else b""
        if rest[:1] in (b"4", b"6") and len(rest) > 3:
            self.client_ip = (cstrings(rest[3:]) or [b""])[0].decode("ascii", "replace")

    def _admission(self) -> Admission | None:
        """The message's hold on capacity, taken with its first content; None once it was
        refused (the rest of the message is read and dropped)."""
        message = self.message
        if message.refused is not None:
            return None
        if message.admission is None:
            try:
                message.admission = self.classifier.admit("milter")
            except Rejected as exc:
                message.refused = refusal(exc.code, exc.details)
                return None
        return message.admission

    async def _take(self, data: bytes) -> bool:
        """Reserve memory for `data`; False when the message is refused."""
        admission = self._admission()
        if admission is None:
            return False
        try:
            await self.classifier.reserve(admission, len(data))
        except Rejected as exc:
            self.message.refused = refusal(exc.code, exc.details)
            self._release()
            return False
        return True

    async def header(self, data: bytes) -> None:
        parts = cstrings(data)
        if len(parts) != 2:
            raise ProtocolError("milter header packet without a name and a value")
        name = parts[0].decode("utf-8", "replace")
        value = parts[1].decode("utf-8", "replace")
        if await self._take(data):
            self.message.headers.append((name, value))

    async def body(self, data: bytes) -> None:
        if await self._take(data):
            self.message.chunks.append(data)

    def _raw(self) -> bytes:
        sep = ":" if self.protocol & P_HDR_LEADSPC else ": "
        head = "".join(f"{name}{sep}{value.replace(chr(10), chr(13) + chr(10))}\r\n"
                       for name, value in self.message.headers)
        return head.encode("utf-8", "surrogateescape") + b"\r\n" + b"".join(self.message.chunks)

    async def end_of_message(self) -> bytes:
        message = self.message
        options = self.classifier.options()
        self.metrics.commands.labels("milter", "message").inc()
        admission = self._admission() if message.refused is None else None
        response = None
        if admission is not None:
            recipients = [address(r) for r in message.recipients]
            mail_class, scope = mail_class_and_scope(message.headers, options)
            call = LocalCall(self.queue_id, self._raw(),
                             Envelope(message.mail_from, tuple(recipients), self.client_ip,
                                      self.helo), mail_class=mail_class, list_scope=scope)
            try:
                response = await self.classifier.classify(admission, call)
            except Rejected as exc:
                message.refused = refusal(exc.code, exc.details)
        try:
            if response is None:
                refused = message.refused or refusal(grpc.StatusCode.INTERNAL, "no verdict")
                return packet(REPLYCODE, refused.smtp_reply.encode() + b"\0")
            return self.verdict(response, options)
        finally:
            self._end_message()

    def verdict(self, response: filter_pb2.ClassifyResponse, options: MtaOptions) -> bytes:
        if response.action == filter_pb2.REJECT:
            return packet(REPLYCODE, f"550 5.7.1 {options.reject_reason}".encode() + b"\0")
        out = []
        if self.actions & F_CHGHDRS:
            out += self.remove_owned_headers(options)
        if self.actions & F_ADDHDRS:
            lead = " " if self.protocol & P_HDR_LEADSPC else ""
            for name, value in result_headers(response, options):
                out.append(packet(ADDHEADER, name.encode() + b"\0" +
                                  (lead + clean_text(value, 2000)).encode() + b"\0"))
        if options.remove_suppressed_recipients and self.actions & F_DELRCPT:
            out += self.remove_suppressed(response)
        if response.action == filter_pb2.QUARANTINE and self.actions & F_QUARANTINE:
            out.append(packet(QUARANTINE, options.quarantine_reason.encode() + b"\0"))
        out.append(packet(CONTINUE))
        return b"".join(out)

    def remove_owned_headers(self, options: MtaOptions) -> list[bytes]:
        seen: dict[str, int] = {}
        out = []
        for name, value in self.message.headers:
            index = seen[name.lower()] = seen.get(name.lower(), 0) + 1
            if options.owned_header(name, value):
                out.append(packet(CHGHEADER, _LENGTH.pack(index) + name.encode() + b"\0\0"))
        return out

    def remove_suppressed(self, response: filter_pb2.ClassifyResponse) -> list[bytes]:
        suppressed = set(response.suppressed_recipients)
        out = []
        for raw in self.message.recipients:
            if address(raw) in suppressed:
                out.append(packet(DELRCPT, raw + b"\0"))
        if out:
            self.metrics.recipients_removed.inc(len(out))
            self.log.info("suppressed recipients removed from the envelope", extra={
                "queue_id": self.queue_id, "removed": len(out),
                "suppression_state": filter_pb2.SuppressionState.Name(
                    response.suppression_state)})
        return out

    def _release(self) -> None:
        admission = self.message.admission
        if admission is not None:
            admission.close()
            self.message.admission = None

    def _end_message(self) -> None:
        """The message is over (answered, aborted, or the connection went): give back what
        it held and start afresh."""
        self._release()
        self.message = _Message()


async def serve(conn: Connection, classifier: Classifier, metrics: ProtocolMetrics,
                log: logging.Logger) -> None:
    await MilterSession(conn, classifier, metrics, log).run()
