"""Receiving a Filter request: how long it may take, and what a request may hold.

The memory budget (memory.py) is reserved before a message is received, so receiving must
not last indefinitely: three calls that announced large messages and never sent them held
a worker's whole budget, and 64 idle streams every call slot, until the connection's
maximum age closed them (~45 s, and repeatable), while health said SERVING (issue 20). A
`ReceiveWatchdog` ends a call whose message has not arrived within the receive time limit
and gives its reservation back.

What a request holds is bounded before anything is built from it: requests are handed to
the servicer as bytes (the handlers register no deserializer), checked against the size
the call announced and the server's limits, and only then parsed; a malformed request is
INVALID_ARGUMENT (gRPC's own deserializer made it INTERNAL). 16 requests of an 88-byte
message and 19 MiB of recipients announced as 88 bytes peaked at 1,105 MiB before.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import threading
import time

import grpc
from google.protobuf.message import DecodeError

from filter_server.server.config import ENVELOPE_ALLOWANCE_BYTES
from mailwarden.filter.v1 import filter_pb2

# An address is at most 254 octets (RFC 5321); room for "<...>", quoting and IDNA.
MAX_RECIPIENT_CHARS = 320
MAX_FIELD_CHARS = 1024               # request_id, mail_from, helo, client_ip, list_scope
# What a request may hold beyond its message once the limits above hold (the transport
# limit adds it to --max-message-bytes).
MAX_ENVELOPE_BYTES = ENVELOPE_ALLOWANCE_BYTES


class RequestInvalid(ValueError):
    """A request refused before it is classified; the message is for the caller (it never
    repeats what the caller sent at length)."""


def parse_request(data: bytes, *, max_recipients: int) -> filter_pb2.ClassifyRequest:
    """The ClassifyRequest in `data`, within the limits above; raises RequestInvalid."""
    try:
        request = filter_pb2.ClassifyRequest.FromString(data)
    except DecodeError:
        raise RequestInvalid("the request is not a valid mailwarden.filter.v1."
                             "ClassifyRequest") from None
    envelope = request.envelope
    recipients = envelope.recipients
    if len(recipients) > max_recipients:
        raise RequestInvalid(f"{len(recipients):,} recipients; this server takes at most "
                             f"{max_recipients:,} per call (--max-recipients): split the "
                             "envelope")
    for name, value in (("request_id", request.request_id), ("list_scope", request.list_scope),
                        ("envelope.mail_from", envelope.mail_from),
                        ("envelope.helo", envelope.helo),
                        ("envelope.client_ip", envelope.client_ip)):
        if len(value) > MAX_FIELD_CHARS:
            raise RequestInvalid(f"{name} is {len(value):,} characters; at most "
                                 f"{MAX_FIELD_CHARS:,}")
    for index, recipient in enumerate(recipients):
        if len(recipient) > MAX_RECIPIENT_CHARS:
            raise RequestInvalid(f"envelope.recipients[{index}] is {len(recipient):,} "
                                 f"characters; an address has at most {MAX_RECIPIENT_CHARS}")
    return request


def shown(text: str, limit: int = 128) -> str:
    """Caller-chosen text as it may appear in logs and status details: cut to `limit`."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text):,} characters)"


class _Watch:
    __slots__ = ("due", "context", "details", "fired", "done")

    def __init__(self, due: float, context: grpc.ServicerContext, details: str) -> None:
        self.due = due
        self.context = context
        self.details = details
        self.fired = False   # the call was ended for not delivering in time
        self.done = False    # disarmed: the message came (or the call ended otherwise)


class ReceiveWatchdog:
    """Ends calls that do not deliver a message in time: `arm` before waiting for a
    message, `disarm` once it is in (True: too late, the call was ended). One thread per
    worker, woken for the earliest deadline only."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, context: grpc.ServicerContext, seconds: float, details: str) -> _Watch:
        watch = _Watch(time.monotonic() + seconds, context, details)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="receive-watchdog",
                                                daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (watch.due, next(self._seq), watch))
            if self._heap[0][2] is watch:
                self._lock.notify()
        return watch

    def disarm(self, watch: _Watch) -> bool:
        with self._lock:
            watch.done = True
            return watch.fired

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    if self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                        continue
                    self._lock.wait(self._heap[0][0] - time.monotonic() if self._heap
                                    else None)
                _, _, watch = heapq.heappop(self._heap)
                if watch.done:
                    continue
                watch.fired = True
            _end_call(watch.context, grpc.StatusCode.DEADLINE_EXCEEDED, watch.details)


def _end_call(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """End a call from outside its handler, with a status the client sees. gRPC's public
    API can only cancel (the client then sees CANCELLED and no reason); the C call object
    takes a status too (tests/filter_server/server/test_receive_limits.py checks what the
    client sees)."""
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        cygrpc = importlib.import_module("grpc._cython.cygrpc")
        call.cancel(getattr(cygrpc.StatusCode, code.name.lower()), details)  # type: ignore[union-attr]
    except Exception:  # another gRPC build: cancel without a reason
        context.cancel()
