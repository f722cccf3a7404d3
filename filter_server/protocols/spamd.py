"""The spamd protocol (SPAMC/1.x), server side: what `spamc`, Exim's `spam =` ACL
condition, amavis and MailScanner speak to SpamAssassin's spamd.

Our own, small implementation: the PyPI packages for this protocol (aiospamc, spamc) are
clients. One request per connection, as spamd does:

    <COMMAND> SPAMC/1.5      Content-length: N  [Compress: zlib]  [User: u]  <N bytes>
    (no Content-length: the message is what the client sends before it half-closes)
 -> SPAMD/1.5 0 EX_OK  Spam: True ; 23.5 / 5.0  Content-length: M  <M bytes>

(each line ends with CRLF, the headers with an empty line).

CHECK (no body), SYMBOLS (hit names, comma-separated), REPORT (a SpamAssassin-style
report), REPORT_IFSPAM (the report only for spam), PROCESS (the message with our headers
added), HEADERS (only its header section), PING (`SPAMD/1.5 0 PONG`), SKIP (nothing) and
TELL (refused: EX_UNAVAILABLE — Mailwarden learns offline, from `mailwarden train`).
`Spam: True` whenever the action is not ACCEPT; the required score is the policy's tag
threshold. A client older than SPAMC/1.3 (Exim sends `REPORT SPAMC/1.2`) gets that
version's reply, where `score/required` opens the body instead of a `Spam:` header.

Errors use spamd's sysexits codes: 76 EX_PROTOCOL (malformed, truncated, too slow), 65
EX_DATAERR (too large), 75 EX_TEMPFAIL (at capacity, no policy yet), 69 EX_UNAVAILABLE
(TELL), 64 EX_USAGE (unknown command). The `User` header is accepted and ignored: there is
no per-user configuration.
"""

from __future__ import annotations

import logging
import re
import zlib

import grpc

from filter_server.engine.compiled import Envelope
from filter_server.protocols.server import (
    Classifier,
    Connection,
    ProtocolError,
    ProtocolMetrics,
    receive_body,
    receive_to_end,
)
from filter_server.protocols.verdict import (
    clean_text,
    header_fields,
    hit_names,
    is_spam,
    mail_class_and_scope,
    refusal,
    report_text,
    result_headers,
)
from filter_server.server.servicer import LocalCall, Rejected

COMMANDS = ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS", "PING",
            "SKIP", "TELL")
_REQUEST = re.compile(rb"^([A-Z_]+) SPAMC/(\d+)\.(\d+)\r?\n$")
MAX_HEADERS = 32
MAX_HEADER_BYTES = 16 * 1024  # real requests send a few short ones
TELL_READ_BYTES = 1 << 20
EX_OK, EX_USAGE, EX_DATAERR, EX_UNAVAILABLE, EX_TEMPFAIL, EX_PROTOCOL = \
    0, 64, 65, 69, 75, 76
_NAMES = {EX_OK: "EX_OK", EX_USAGE: "EX_USAGE", EX_DATAERR: "EX_DATAERR",
          EX_UNAVAILABLE: "EX_UNAVAILABLE", EX_TEMPFAIL: "EX_TEMPFAIL",
          EX_PROTOCOL: "EX_PROTOCOL"}


def status_line(code: int, text: str = "") -> bytes:
    words = _NAMES[code] + (" " + clean_text(text) if text else "")
    return f"SPAMD/1.5 {code} {words}\r\n".encode()


def error_reply(code: int, text: str) -> bytes:
    return status_line(code, text) + b"\r\n"


async def serve(conn: Connection, classifier: Classifier, metrics: ProtocolMetrics,
                log: logging.Logger) -> None:
    try:
        reply = await answer(conn, classifier, metrics)
    except ProtocolError as exc:
        reply = error_reply(EX_PROTOCOL, str(exc))
        try:
            await conn.send(reply)
        except ProtocolError:
            pass
        raise
    if reply:
        await conn.send(reply)


async def answer(conn: Connection, classifier: Classifier, metrics: ProtocolMetrics) -> bytes:
    line = await conn.line("the spamd request line", eof_ok=True)
    if not line:
        return b""  # connected and closed: a TCP health check
    match = _REQUEST.match(line)
    if not match:
        raise ProtocolError(f"not a spamd request line: {line[:80]!r}")
    command = match.group(1).decode()
    version = (int(match.group(2)), int(match.group(3)))
    headers = await read_headers(conn)
    if command not in COMMANDS:
        metrics.commands.labels("spamd", "unknown").inc()
        return error_reply(EX_USAGE, f"unknown command {command[:32]!r}; "
                           f"supported: {', '.join(COMMANDS)}")
    metrics.commands.labels("spamd", command).inc()
    if command == "PING":
        return b"SPAMD/1.5 0 PONG\r\n"
    if command == "SKIP":
        return b""
    length = headers.get("content-length")
    if length is not None and not length.isdigit():
        raise ProtocolError(f"malformed Content-length {length[:32]!r}")
    # Without Content-length the message runs to the end of the client's stream, as
    # spamd reads it (Haraka's spamassassin plugin sends none); zlib needs the length.
    size = int(length) if length is not None else None
    compressed = headers.get("compress", "").lower() == "zlib"
    if size is None and compressed:
        raise ProtocolError(f"{command} with Compress: zlib needs a Content-length header")
    if command == "TELL":
        if size is not None and size <= TELL_READ_BYTES:
            # read it, so the client sees our answer, not a reset
            await conn.exactly(size, "the TELL message")
        return error_reply(EX_UNAVAILABLE, "TELL is not enabled: Mailwarden does not learn "
                           "from single messages; retrain with `mailwarden train`")
    try:
        admission = classifier.admit("spamd")
    except Rejected as exc:
        return _refused(exc)
    try:
        try:
            raw = (await receive_body(conn, classifier, admission, size, "the message")
                   if size is not None else
                   await receive_to_end(conn, classifier, admission, "the message"))
            if compressed:
                raw = await _inflate(raw, classifier, admission)
            elif headers.get("compress"):
                return error_reply(EX_PROTOCOL, f"unknown Compress: {headers['compress']!r}")
            options = classifier.options()
            mail_class, scope = mail_class_and_scope(header_fields(raw), options)
            response = await classifier.classify(
                admission, LocalCall("", raw, Envelope(), mail_class=mail_class,
                                     list_scope=scope))
        except Rejected as exc:
            return _refused(exc)
    finally:
        admission.close()
    return reply(command, version, response, options, raw)


def _refused(exc: Rejected) -> bytes:
    refused = refusal(exc.code, exc.details)
    return error_reply(EX_TEMPFAIL if refused.temporary else EX_DATAERR, refused.text)


async def _inflate(data: bytes, classifier: Classifier, admission: object) -> bytes:
    """Decompress within the size limit, reserving memory for what comes out (a
    compression bomb stops at the limit)."""
    limit = classifier.max_message_bytes
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"Compress: zlib body does not decompress: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"message decompresses to more than {limit} bytes, the most this "
                       "server accepts")
    await classifier.reserve(admission, len(out))  # type: ignore[arg-type]
    return out


async def read_headers(conn: Connection) -> dict[str, str]:
    headers: dict[str, str] = {}
    total = 0
    for _ in range(MAX_HEADERS + 1):
        line = await conn.line("spamd request headers")
        if line in (b"\r\n", b"\n"):
            return headers
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise ProtocolError(f"spamd request headers over {MAX_HEADER_BYTES} bytes",
                                "too_large")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProtocolError(f"malformed spamd header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    raise ProtocolError(f"more than {MAX_HEADERS} spamd request headers")


def reply(command: str, version: tuple[int, int], response, options, raw: bytes) -> bytes:
    spam = is_spam(response)
    score, required = response.score, options.tag_threshold
    spam_line = f"Spam: {'True' if spam else 'False'} ; {score:.1f} / {required:.1f}\r\n"
    if command == "CHECK":
        body = b""
    elif command == "SYMBOLS":
        body = ",".join(hit_names(response)).encode()
    elif command == "REPORT" or (command == "REPORT_IFSPAM" and spam):
        body = report_text(response, options).encode()
    elif command == "REPORT_IFSPAM":
        body = b""
    else:  # PROCESS, HEADERS
        body = with_headers(raw, response, options, headers_only=command == "HEADERS")
    if version < (1, 3):
        if command in ("REPORT", "REPORT_IFSPAM"):  # the score opens the body
            body = f"{score:.1f}/{required:.1f}\r\n".encode() + body
        return (status_line(EX_OK) + f"Content-length: {len(body)}\r\n\r\n".encode() + body
                if command != "CHECK" else status_line(EX_OK) + spam_line.encode() + b"\r\n")
    return (status_line(EX_OK) + spam_line.encode() +
            f"Content-length: {len(body)}\r\n\r\n".encode() + body)


def with_headers(raw: bytes, response, options, *, headers_only: bool) -> bytes:
    """The message with our headers first and forged copies of them dropped."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end >= 0:
            head, body = raw[:end + len(sep) // 2], raw[end + len(sep):]
            break
    else:
        head, body = raw if raw.endswith(b"\n") else raw + b"\r\n", b""
    kept = _drop_owned(head, options)
    ours = "".join(f"{name}: {clean_text(value, 2000)}\r\n"
                   for name, value in result_headers(response, options)).encode()
    out = ours + kept + b"\r\n"
    return out if headers_only else out + body


def _drop_owned(head: bytes, options) -> bytes:
    out: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        name, _, value = line.decode("latin-1").partition(":")
        dropping = options.owned_header(name.strip(), value)
        if not dropping:
            out.append(line)
    return b"".join(out)
