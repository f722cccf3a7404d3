"""Rspamd's scanning protocol, server side: `POST /checkv2` over HTTP/1.x with Rspamd's
request headers and JSON reply — what rspamc, Haraka's rspamd plugin, Rspamd's own milter
proxy worker and other Rspamd clients send to a normal worker — plus `GET /ping`, and the
legacy line protocol (`CHECK RSPAMC/1.3`) that Exim's `spamd_address = ... variant=rspamd`
still speaks on the same port.

Our own, small implementation (no Python library serves this protocol). Request headers
read: `From`, `Rcpt` (repeatable), `IP`, `Helo`, `Hostname`, `Queue-Id`, `Settings-ID` /
`Settings` (accepted; Mailwarden's policy is the settings), `User`, `Pass`,
`Content-Length` or `Transfer-Encoding: chunked`, `Connection`. The reply:

    {"action": "add header", "score": 7.5, "required_score": 20.0, "is_skipped": false,
     "symbols": {"SUBJ_MONEY": {"name": ..., "score": 2.0, "metric_score": 2.0,
                                "description": ...}, ...},
     "thresholds": {"reject": 20.0, "quarantine": 12.0, "add header": 5.0},
     "messages": {"smtp_message": "<mta.rejectReason>"},          (reject only)
     "milter": {"add_headers": {...}, "remove_headers": {...}},
     "message-id": ..., "time_real": ..., "mailwarden": {"policy_hash": ...,
     "suppressed_recipients": [...], "suppression_state": ...}}

Actions: ACCEPT → `no action`, TAG → `add header`, QUARANTINE → `quarantine` (for
Rspamd's milter proxy: `reject` with `milter.reject = "quarantine"`, which it turns into a
hold), REJECT → `reject`; `required_score` is the reject
threshold, as Rspamd reports it. A refused call answers like an overloaded Rspamd: 503
(temporary) or 413 (too large) with `{"error": ...}`; malformed requests 400, unknown
paths 404 (learning and the controller's commands are not served), zstd-compressed bodies
415. `GET /checkv2` with a body is taken like POST: Rspamd's proxy sends that.
"""

from __future__ import annotations

import json
import logging
import re
import time

from filter_server.engine.compiled import Envelope
from filter_server.protocols.server import (
    Classifier,
    Connection,
    ProtocolError,
    ProtocolMetrics,
    receive_body,
)
from filter_server.protocols.verdict import (
    RSPAMD_ACTIONS,
    MtaOptions,
    clean_text,
    header_fields,
    mail_class_and_scope,
    refusal,
    result_headers,
)
from filter_server.server.servicer import Admission, LocalCall, Rejected
from mailwarden.filter.v1 import filter_pb2

MAX_HEADERS = 100
# Rcpt lines for a large envelope fit; headers are held outside the memory budget
MAX_HEADER_BYTES = 256 * 1024
_HTTP_REQUEST = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.([01])\r?\n$")
_LEGACY_REQUEST = re.compile(rb"^([A-Z_]+) RSPAMC/(\d+)\.(\d+)\r?\n$")
LEGACY_COMMANDS = ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large",
            415: "Unsupported Media Type", 503: "Service Unavailable"}


class Request:
    def __init__(self, method: str, path: str, minor: int, headers: list[tuple[str, str]]):
        self.method = method
        self.path = path
        self.minor = minor
        self.headers = headers

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    @property
    def keep_alive(self) -> bool:
        connection = self.get("connection").lower()
        return connection == "keep-alive" if self.minor == 0 else connection != "close"


def http_reply(status: int, body: bytes, *, keep_alive: bool,
               content_type: str = "application/json") -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
            "Server: mailwarden\r\n\r\n")
    return head.encode() + body


def error_body(message: str) -> bytes:
    return json.dumps({"error": clean_text(message)}).encode()


async def serve(conn: Connection, classifier: Classifier, metrics: ProtocolMetrics,
                log: logging.Logger) -> None:
    while True:
        line = await conn.line("a request line", eof_ok=True)
        if not line:
            return
        legacy = _LEGACY_REQUEST.match(line)
        if legacy:
            await conn.send(await legacy_check(conn, classifier, metrics, legacy))
            return  # the legacy protocol closes after each answer (Exim reads to EOF)
        match = _HTTP_REQUEST.match(line)
        if not match:
            await conn.send(http_reply(400, error_body(
                f"not an HTTP/1.x or RSPAMC request line: {line[:80]!r}"), keep_alive=False))
            raise ProtocolError(f"not an HTTP or RSPAMC request line: {line[:80]!r}")
        try:
            request = Request(match.group(1).decode(), match.group(2).decode("latin-1"),
                              int(match.group(3)), await read_headers(conn))
            status, body = await handle(conn, classifier, metrics, request)
        except ProtocolError as exc:
            status = 408 if exc.reason == "timeout" else 400
            try:
                await conn.send(http_reply(status, error_body(str(exc)), keep_alive=False))
            except ProtocolError:
                pass
            raise
        keep = request.keep_alive and status < 400 and not conn.stopping.is_set()
        await conn.send(http_reply(status, body, keep_alive=keep,
                                   content_type="text/plain" if request.path == "/ping"
                                   else "application/json"))
        if not keep:
            return


async def read_headers(conn: Connection) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    total = 0
    for _ in range(MAX_HEADERS + 1):
        line = await conn.line("request headers")
        if line in (b"\r\n", b"\n"):
            return headers
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise ProtocolError(f"request headers over {MAX_HEADER_BYTES} bytes", "too_large")
        name, sep, value = line.decode("utf-8", "replace").partition(":")
        if not sep or not name.strip():
            raise ProtocolError(f"malformed request header line {line[:80]!r}")
        headers.append((name.strip().lower(), value.strip()))
    raise ProtocolError(f"more than {MAX_HEADERS} request headers")


async def handle(conn: Connection, classifier: Classifier, metrics: ProtocolMetrics,
                 request: Request) -> tuple[int, bytes]:
    path = request.path.split("?", 1)[0]
    if path == "/ping":
        metrics.commands.labels("rspamd", "ping").inc()
        return 200, b"pong\r\n"
    if path not in ("/checkv2", "/check"):
        metrics.commands.labels("rspamd", "unknown").inc()
        await drain_body(conn, request)
        return 404, error_body(f"{path[:64]} is not served here: Mailwarden answers "
                               "/checkv2 and /ping (no learning or controller commands)")
    metrics.commands.labels("rspamd", "checkv2").inc()
    if request.method not in ("POST", "GET"):  # Rspamd's own proxy sends GET with a body
        await drain_body(conn, request)
        return 405, error_body("/checkv2 takes POST (or GET) with the message as the body")
    if request.get("compression") or request.get("content-encoding"):
        await drain_body(conn, request)
        return 415, error_body("compressed requests (zstd) are not supported; send the "
                               "message uncompressed")
    try:
        admission = classifier.admit("rspamd")
    except Rejected as exc:
        await drain_body(conn, request)
        return _refused(exc)
    started = time.perf_counter()
    try:
        try:
            raw = await read_body(conn, classifier, admission, request)
            options = classifier.options()
            mail_class, scope = mail_class_and_scope(header_fields(raw), options)
            rcpts = tuple(_bare(r) for r in request.all("rcpt") if r)
            call = LocalCall(request.get("queue-id")[:64], raw,
                             Envelope(_bare(request.get("from")), rcpts,
                                      _ip(request.get("ip")), request.get("helo")),
                             mail_class=mail_class, list_scope=scope)
            response = await classifier.classify(admission, call)
        except Rejected as exc:
            return _refused(exc)
    finally:
        admission.close()
    # Rspamd's milter proxy marks its requests (Flags: milter,...)
    from_proxy = "milter" in [f.strip() for f in request.get("flags").lower().split(",")]
    return 200, json.dumps(check_result(response, options, raw, time.perf_counter() - started,
                                        milter_proxy=from_proxy)).encode()


def _refused(exc: Rejected) -> tuple[int, bytes]:
    refused = refusal(exc.code, exc.details)
    return (503 if refused.temporary else 413), error_body(refused.text)


def _ip(value: str) -> str:
    """The client address without the port Rspamd's proxy appends (`192.0.2.1:25251`,
    `[2001:db8::1]:25251`); a bare IPv6 address is left alone."""
    value = value.strip()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _bare(address: str) -> str:
    address = address.strip()
    return address[1:-1] if address.startswith("<") and address.endswith(">") else address


async def read_body(conn: Connection, classifier: Classifier, admission: Admission,
                    request: Request) -> bytes:
    if request.get("transfer-encoding").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size_line = await conn.line("a chunk size")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {size_line[:40]!r}") from None
            if size == 0:
                while (await conn.line("the chunked trailer")) not in (b"\r\n", b"\n"):
                    pass
                return b"".join(parts)
            parts.append(await receive_body(conn, classifier, admission, size, "a chunk"))
            await conn.line("a chunk's line ending")
    length = request.get("content-length")
    if not length.isdigit():
        raise ProtocolError("the request needs Content-Length or chunked encoding")
    return await receive_body(conn, classifier, admission, int(length), "the message")


async def drain_body(conn: Connection, request: Request) -> None:
    """Read and drop a body we do not serve, so a kept-alive connection stays in step
    (bounded: a large one closes the connection instead)."""
    length = request.get("content-length")
    if length.isdigit() and int(length) <= 1 << 20:
        await conn.exactly(int(length), "the request body")
    elif length or request.get("transfer-encoding"):
        request.headers.append(("connection", "close"))


def check_result(response: filter_pb2.ClassifyResponse, options: MtaOptions, raw: bytes,
                 seconds: float, *, milter_proxy: bool = False) -> dict:
    """The /checkv2 answer. For Rspamd's milter proxy a QUARANTINE is said the way that
    proxy holds a message: action `reject` with `milter.reject = "quarantine"` (a stock
    Rspamd has no `quarantine` action registered, and its proxy tempfails on one)."""
    thresholds = {"reject": options.reject_threshold, "add header": options.tag_threshold}
    symbols = {h.name: {"name": h.name, "score": h.score, "metric_score": h.score,
                        "description": h.description} for h in response.hits}
    result: dict = {
        "is_skipped": False,
        "score": round(response.score, 4),
        "required_score": options.reject_threshold,
        "action": RSPAMD_ACTIONS.get(response.action, "no action"),
        "thresholds": thresholds,
        "symbols": symbols,
        "time_real": round(seconds, 6),
        "mailwarden": {
            "policy_hash": response.policy_hash,
            "spam_probability": response.spam_probability,
            "suppressed_recipients": list(response.suppressed_recipients),
            "suppression_state": filter_pb2.SuppressionState.Name(
                response.suppression_state)},
    }
    message_id = dict((k.lower(), v) for k, v in header_fields(raw)).get("message-id")
    if message_id:
        result["message-id"] = message_id.strip("<>")
    held = milter_proxy and response.action == filter_pb2.QUARANTINE
    if held:
        result["action"] = "reject"
    if response.action == filter_pb2.REJECT:
        result["messages"] = {"smtp_message": options.reject_reason}
    else:
        owned = {name for name, value in header_fields(raw)
                 if options.owned_header(name, value)}
        result["milter"] = {
            "add_headers": {name: {"value": value, "order": 0} if name ==
                            "Authentication-Results" else value
                            for name, value in result_headers(response, options)},
            "remove_headers": {name: 0 for name in sorted(owned)},
        }
        if held:
            result["milter"]["reject"] = "quarantine"
    return result


async def legacy_check(conn: Connection, classifier: Classifier, metrics: ProtocolMetrics,
                       match: re.Match) -> bytes:
    """`CHECK RSPAMC/1.3` (Exim's variant=rspamd): headers, then Content-length bytes of
    message; the reply Exim parses is
    `RSPAMD/1.3 0 EX_OK\\r\\nMetric: default; True; 7.5 / 5.0 / 20.0\\r\\nAction: ...`,
    where Exim calls it spam when the score reaches the second number (the tag
    threshold)."""
    command = match.group(1).decode()
    headers = await read_headers(conn)
    request = Request("POST", "/checkv2", 0, headers)
    if command not in LEGACY_COMMANDS:
        metrics.commands.labels("rspamd", "unknown").inc()
        return f"RSPAMD/1.3 64 EX_USAGE unknown command {command[:32]!r}\r\n\r\n".encode()
    metrics.commands.labels("rspamd", "rspamc_" + command.lower()).inc()
    try:
        admission = classifier.admit("rspamd")
    except Rejected as exc:
        return f"RSPAMD/1.3 75 EX_TEMPFAIL {refusal(exc.code, exc.details).text}\r\n\r\n" \
            .encode()
    try:
        try:
            raw = await read_body(conn, classifier, admission, request)
            options = classifier.options()
            mail_class, scope = mail_class_and_scope(header_fields(raw), options)
            rcpts = tuple(_bare(r) for r in request.all("rcpt") if r)
            response = await classifier.classify(admission, LocalCall(
                request.get("queue-id")[:64], raw,
                Envelope(_bare(request.get("from")), rcpts, _ip(request.get("ip")),
                         request.get("helo")), mail_class=mail_class, list_scope=scope))
        except Rejected as exc:
            refused = refusal(exc.code, exc.details)
            code = "75 EX_TEMPFAIL" if refused.temporary else "65 EX_DATAERR"
            return f"RSPAMD/1.3 {code} {refused.text}\r\n\r\n".encode()
    finally:
        admission.close()
    spam = "True" if response.action != filter_pb2.ACCEPT else "False"
    lines = ["RSPAMD/1.3 0 EX_OK",
             f"Metric: default; {spam}; {response.score:.2f} / {options.tag_threshold:.2f} / "
             f"{options.reject_threshold:.2f}",
             f"Action: {RSPAMD_ACTIONS.get(response.action, 'no action')}"]
    lines += [f"Symbol: {h.name}({h.score:.2f})" for h in response.hits]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
