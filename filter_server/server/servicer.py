"""The `mailwarden.filter.v1.Filter` service: Classify and ClassifyStream.

Every path ends in a gRPC status a caller can act on: UNAVAILABLE before the first policy
is compiled (retry elsewhere), RESOURCE_EXHAUSTED for a message over the size limit or a
server at capacity, INVALID_ARGUMENT for an empty message, DEADLINE_EXCEEDED when the
deadline passed before work began (the work is skipped). Malformed MIME is not an error:
the engine classifies what it can and reports a MIME_MALFORMED hit.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterator

import grpc

from filter_server.auth.gather import Evidence
from filter_server.auth.service import Authenticator
from filter_server.engine.compiled import Envelope, Verdict
from filter_server.message import MAX_PARSE_BYTES
from filter_server.server.authentication import gather_for
from filter_server.server.config import ServeConfig
from filter_server.server.cost import CostModel, idle_seconds
from filter_server.server.memory import MemoryBudget
from filter_server.server.metrics import METHODS, FilterMetrics
from filter_server.server.policy import PolicyHolder
from filter_server.server.receiving import (
    MAX_ENVELOPE_BYTES,
    ReceiveWatchdog,
    RequestInvalid,
    parse_request,
    shown,
)
from filter_server.server.shadow import ShadowEvaluator
from filter_server.server.suppression import NoSuppressionStore, SuppressionProvider
from filter_server.server.turns import Turn, TurnQueue
from mailwarden.filter.v1 import filter_pb2
from mailwarden.wire import MESSAGE_BYTES_METADATA, REQUEST_BYTES_METADATA

SERVICE_NAME = filter_pb2.DESCRIPTOR.services_by_name["Filter"].full_name
# A call is admitted only if its expected time to an answer (the work queued ahead of it
# and its own) is within this share of what is left of its deadline ...
ADMISSION_DEADLINE_SHARE = 0.5
# ... after waiting at most this share of its deadline for memory to receive its message.
MEMORY_WAIT_DEADLINE_SHARE = 0.25
# Memory a call reserves from the worker's budget (filter_server/server/memory.py) before
# its message is received: gRPC's receive buffer, the serialized bytes, the parsed request
# (whose arena rounds up) and the message read from it exist side by side for a moment
# (measured: one 20 MiB message lifts a worker's RSS by 83 MiB, its 4 MiB parse included;
# with 3 copies reserved, the long large_burst peaked at 477 of 512 MiB). Once received, a
# call keeps its message once (the parsed request is dropped) plus this much for the rest.
RECEIVE_COPIES = 4
HELD_OVERHEAD_BYTES = 64 * 1024
# A call without a deadline (and every ClassifyStream without one, per message) waits at
# most this long for memory; without a bound a call could wait, holding its slot, forever.
NO_DEADLINE_MEMORY_WAIT_SECONDS = 5.0
STREAM_MEMORY_WAIT_SECONDS = NO_DEADLINE_MEMORY_WAIT_SECONDS
# What checking one recipient against the suppression cache costs (normalising it: IDNA,
# Unicode), in parsed bytes of the cost model: about 36 us for a non-ASCII domain against
# 40 ns per parsed byte. Admission prices a call's recipients with it.
RECIPIENT_COST_BYTES = 1024
_ACTIONS: dict[str, int] = {
    name: filter_pb2.Action.Value(name) for name in ("ACCEPT", "TAG", "QUARANTINE", "REJECT")}
_OK = grpc.StatusCode.OK


class Rejected(Exception):
    """A request the service answers with a non-OK status; `at_capacity` when the worker
    was too busy (counted in the capacity-rejection metric; not when the caller's own
    request or deadline was the reason)."""

    def __init__(self, code: grpc.StatusCode, details: str, *,
                 at_capacity: bool = False) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.at_capacity = at_capacity


class _Held:
    """What one call holds of the worker's capacity, so every exit gives back just that."""

    __slots__ = ("slot", "memory", "turn")

    def __init__(self) -> None:
        self.slot = False
        self.memory = 0
        self.turn: Turn | None = None  # its message's place in the classification queue


def add_filter_service(servicer: "FilterServicer", server: grpc.Server) -> None:
    """Register the Filter service. Classify is registered as request-streaming although
    the API (and every client) is unary — the two look the same on the wire — because gRPC
    receives a unary call's message before the handler runs, and only a streaming handler
    decides when a message is received: here, once the call has reserved the memory for it
    (a burst of large messages is then refused, not received and OOM-killed)."""
    # No request deserializer: the handlers get each request as bytes, check its size
    # against what they reserved and parse it themselves (server/receiving.py).
    handlers: dict[str, grpc.RpcMethodHandler] = {
        "Classify": grpc.stream_unary_rpc_method_handler(
            servicer.Classify,
            response_serializer=filter_pb2.ClassifyResponse.SerializeToString),
        "ClassifyStream": grpc.stream_stream_rpc_method_handler(
            servicer.ClassifyStream,
            response_serializer=filter_pb2.ClassifyResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class FilterServicer:
    def __init__(self, holder: PolicyHolder, metrics: FilterMetrics, log: logging.Logger, *,
                 suppression: SuppressionProvider, max_message_bytes: int,
                 max_concurrent_rpcs: int, memory: MemoryBudget,
                 cpu_budget_seconds: float = 0.0,
                 max_recipients: int = ServeConfig.max_recipients,
                 receive_timeout_seconds: float = ServeConfig.receive_timeout_seconds,
                 max_streams_per_connection: int = ServeConfig.max_streams_per_connection,
                 authenticator: Authenticator | None = None,
                 shadow: ShadowEvaluator | None = None) -> None:
        self._holder = holder
        self._shadow = shadow  # a candidate policy judging a sample, after the answer
        self._authenticator = authenticator
        self._metrics = metrics
        self._log = log
        self._suppression = suppression
        self._max_bytes = max_message_bytes
        self._capacity = max_concurrent_rpcs
        self._cpu_budget = cpu_budget_seconds
        self._max_recipients = max_recipients
        self._receive_timeout = receive_timeout_seconds
        self._max_streams = max_streams_per_connection
        self._streams: dict[str, int] = {}  # open ClassifyStreams per connection (peer)
        self._streams_lock = threading.Lock()
        self._watchdog = ReceiveWatchdog()
        # Recipients cost admission time only when they are looked up (normalised).
        self._recipient_cost = 0 if isinstance(suppression, NoSuppressionStore) \
            else RECIPIENT_COST_BYTES
        self.memory = memory
        # Admission control of our own (not only the gRPC core's maximum_concurrent_rpcs):
        # it applies to Filter calls only, so health checks keep headroom under overload.
        self._slots = threading.BoundedSemaphore(max_concurrent_rpcs)
        # Admitted messages are classified one at a time per worker, earliest deadline
        # first (server/turns.py). Classification is CPU-bound Python: several threads at
        # once only fight over the interpreter lock and starve gRPC's polling thread, which
        # then stops taking new calls in — they queue unseen in the gRPC core until their
        # deadlines pass, and admission control never gets to answer RESOURCE_EXHAUSTED
        # (measured by tests/fault: above capacity, calls ended in DEADLINE_EXCEEDED).
        self._turns = TurnQueue(CostModel())
        # Per-verdict log lines cost throughput; decide once whether they are wanted.
        self._log_verdicts = log.isEnabledFor(logging.DEBUG)
        self._duration = {m: metrics.duration.labels(m) for m in METHODS}
        self._verdicts = {a: metrics.verdicts.labels(a) for a in _ACTIONS}
        # The series every successful call updates, looked up once (labels() takes a lock
        # and builds a key per call).
        self._finished_ok = {m: metrics.requests.labels(m, _OK.name) for m in METHODS}

    # --- RPCs ---------------------------------------------------------------------------
    def Classify(self, request_iterator: Iterator[bytes],
                 context: grpc.ServicerContext) -> filter_pb2.ClassifyResponse:
        """One message (a unary call; see add_filter_service). Admission runs before the
        request is received: a call slot, then memory to receive it into; the request must
        then arrive within the receive time limit."""
        held = _Held()
        code = _OK
        at_capacity = False
        request_id = ""
        try:
            self._check_deadline(context)
            self._take_slot(held)
            announced = self._announced(context)
            self._reserve_memory(held, self.receive_reservation(announced.request), context,
                                 no_deadline_wait=NO_DEADLINE_MEMORY_WAIT_SECONDS)
            data = self._receive(request_iterator, context)
            if data is None:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               "no request message: Classify takes exactly one")
            call = self._read(data, announced)
            del data  # the parsed request and the message read from it are all we keep
            request_id, raw = call.request_id, call.raw
            self._keep_memory(held, len(raw) + HELD_OVERHEAD_BYTES)
            self._check_size(len(raw))
            self._check(call, context)
            self._authenticate(call, context)
            self._join_queue(held, len(raw), len(call.recipients), context)
            return self._answer(held, call, context, "Classify")
        except Rejected as exc:
            code, at_capacity = exc.code, exc.at_capacity
            self._log_rejection(request_id, exc)
            context.abort(exc.code, exc.details)
            raise  # not reached: abort raises
        except grpc.RpcError:  # the client went away while its message was received
            code = _ended_early(context)
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            self._log.exception("classification failed",
                                extra={"request_id": shown(request_id)})
            context.abort(code, f"internal error (request_id {shown(request_id)!r})")
            raise
        finally:
            self._release(held)
            self._count("Classify", code, at_capacity=at_capacity)

    def ClassifyStream(self, request_iterator: Iterator[bytes],
                       context: grpc.ServicerContext) -> Iterator[filter_pb2.ClassifyResponse]:
        """One message at a time, so responses come back in request order. Each message
        is received like a Classify call's: only after memory for it is reserved (for the
        request size the stream announced, else the largest), and within the receive time
        limit — which also ends a stream that stays idle that long. A connection may hold
        at most --max-streams-per-connection streams."""
        held = _Held()
        code = _OK
        failure: Rejected | None = None
        peer: str | None = None
        try:
            self._check_deadline(context)
            self._take_slot(held)
            peer = self._open_stream(context)
            announced = self._announced(context)
            while True:
                request_id = ""
                call: _Call | None = None
                raw: bytes | None = None
                try:
                    self._reserve_memory(held, self.receive_reservation(announced.request),
                                         context, no_deadline_wait=STREAM_MEMORY_WAIT_SECONDS)
                    data = self._receive(request_iterator, context)
                    if data is None:  # the client closed its side: the stream is done
                        break
                    call = self._read(data, announced)
                    del data
                    request_id, raw = call.request_id, call.raw
                    self._keep_memory(held, len(raw) + HELD_OVERHEAD_BYTES)
                    self._check_size(len(raw))
                    self._check(call, context)
                    self._authenticate(call, context)
                    self._join_queue(held, len(raw), len(call.recipients), context)
                    response = self._answer(held, call, context, "ClassifyStream")
                except Rejected as exc:
                    self._log_rejection(request_id, exc)
                    failure = Rejected(exc.code, f"request_id {shown(request_id)!r}: "
                                       f"{exc.details}" if request_id else exc.details,
                                       at_capacity=exc.at_capacity)
                    break
                finally:
                    # The message goes with its reservation: the generator is suspended
                    # at `yield` and then waits for the next message, and a message kept
                    # referenced meanwhile is memory the budget no longer counts (64
                    # streams held 650 MB that way).
                    call = raw = None
                    self._release_message(held)
                yield response
            if not context.is_active():  # the request stream "ended" by cancellation
                code = _ended_early(context)  # (best effort: gRPC may not know yet)
        except Rejected as exc:  # no slot, too many streams, deadline passed
            failure = exc
            self._log_rejection("", exc)
        except grpc.RpcError:  # the deadline passed, or the client cancelled or went away
            code = _ended_early(context)
        except GeneratorExit:  # gRPC closed the stream (cancellation, shutdown)
            code = _ended_early(context)
            raise
        except Exception:
            self._log.exception("classification failed in a stream")
            failure = Rejected(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            if failure is not None:
                code = failure.code
            if peer is not None:
                self._close_stream(peer)
            self._release(held)
            self._count("ClassifyStream", code, at_capacity=failure is not None
                        and failure.at_capacity)
        if failure is not None:
            context.abort(failure.code, failure.details)

    # --- receiving ----------------------------------------------------------------------
    def _receive(self, request_iterator: Iterator[bytes],
                 context: grpc.ServicerContext) -> bytes | None:
        """The next request's bytes (None: the client sent no more), waiting at most the
        receive time limit: past it the call is ended with DEADLINE_EXCEEDED, which gives
        back its reservation and slot."""
        watch = self._watchdog.arm(
            context, self._receive_timeout,
            f"no request received within {self._receive_timeout:g} s "
            "(--receive-timeout-seconds); the server stopped waiting")
        try:
            data = next(request_iterator, None)
        except grpc.RpcError:
            if self._watchdog.disarm(watch):
                raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"no request received within {self._receive_timeout:g} s") \
                    from None
            raise
        if self._watchdog.disarm(watch):  # it came just as the call was ended
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"no request received within {self._receive_timeout:g} s")
        return data

    def _read(self, data: bytes, announced: "_Announced") -> "_Call":
        """The request in `data`, checked against what the call announced (before it is
        parsed: a request larger than its reservation is not unpacked) and the limits on
        what a request may hold."""
        if announced.request is not None and len(data) > announced.request:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"the request is {len(data):,} bytes but the call announced "
                           f"{announced.request:,} ({REQUEST_BYTES_METADATA})"
                           if announced.message is None else
                           f"the request is {len(data):,} bytes, more than a message of the "
                           f"{announced.message:,} bytes the call announced "
                           f"({MESSAGE_BYTES_METADATA}) and an envelope can take")
        try:
            call = _Call(parse_request(data, max_recipients=self._max_recipients))
        except RequestInvalid as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if announced.message is not None and len(call.raw) > announced.message:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"message is {len(call.raw)} bytes but the call announced "
                           f"{announced.message} ({MESSAGE_BYTES_METADATA})")
        return call

    def _announced(self, context: grpc.ServicerContext) -> "_Announced":
        """The sizes the call announced: its request (REQUEST_BYTES_METADATA, else its
        MESSAGE_BYTES_METADATA plus the largest envelope; None: nothing usable) and its
        message. For a stream, those of its largest request. Too large a size is refused
        before anything is received."""
        announced = _Announced()
        for key, value in context.invocation_metadata() or ():
            if not isinstance(value, str):
                continue
            if key == REQUEST_BYTES_METADATA:
                announced.request = _size(value)
            elif key == MESSAGE_BYTES_METADATA:
                announced.message = _size(value)
        if announced.message is not None:
            self._check_size(announced.message)  # refused before the message is sent
            if announced.request is None:
                announced.request = announced.message + MAX_ENVELOPE_BYTES
        largest = self._max_bytes + MAX_ENVELOPE_BYTES
        if announced.request is not None and announced.request > largest:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"the request is {announced.request:,} bytes; this server "
                           f"accepts at most {largest:,} (a message of {self._max_bytes:,} "
                           "bytes and its envelope)")
        return announced

    def _open_stream(self, context: grpc.ServicerContext) -> str:
        """Count a stream against its connection's limit; returns the connection."""
        peer = context.peer()
        with self._streams_lock:
            count = self._streams.get(peer, 0)
            if count >= self._max_streams:
                raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"this connection already has {count} streams open (at most "
                               f"{self._max_streams}, --max-streams-per-connection); send "
                               "more messages on them, or open another connection")
            self._streams[peer] = count + 1
        return peer

    def _close_stream(self, peer: str) -> None:
        with self._streams_lock:
            count = self._streams.pop(peer) - 1
            if count:
                self._streams[peer] = count

    # --- admission ----------------------------------------------------------------------
    def _take_slot(self, held: _Held) -> None:
        if not self._slots.acquire(blocking=False):
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"server at capacity ({self._capacity} calls in flight); retry on "
                           "another replica", at_capacity=True)
        held.slot = True
        self._metrics.in_flight.inc()

    def _check_deadline(self, context: grpc.ServicerContext) -> None:
        """A call whose deadline passed before it was served is DEADLINE_EXCEEDED, not a
        capacity rejection (a 1 us deadline was answered "server at capacity")."""
        if _deadline_left(context) == 0.0:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED,
                           "the deadline passed before the call was served")

    def _reserve_memory(self, held: _Held, nbytes: int, context: grpc.ServicerContext, *,
                        no_deadline_wait: float) -> None:
        """Reserve `nbytes` of the memory budget, waiting at most a share of the call's
        deadline (or `no_deadline_wait`) for others to give some back."""
        remaining = _deadline_left(context)
        wait = no_deadline_wait if remaining is None else remaining * MEMORY_WAIT_DEADLINE_SHARE
        if not self.memory.reserve(nbytes, wait):
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"server at capacity (its {self.memory.capacity >> 20} MiB for "
                           "messages in flight are taken); retry on another replica",
                           at_capacity=True)
        held.memory = nbytes
        self._metrics.memory_reserved.inc(nbytes)

    def receive_reservation(self, announced: int | None) -> int:
        """Room to receive a request: of the size the call announced, else of the largest
        one this server accepts (a message of --max-message-bytes and its envelope)."""
        largest = self._max_bytes + MAX_ENVELOPE_BYTES
        size = largest if announced is None else min(announced, largest)
        return RECEIVE_COPIES * (size + HELD_OVERHEAD_BYTES)

    def _keep_memory(self, held: _Held, nbytes: int) -> None:
        """Shrink the call's reservation to `nbytes` (its message is in and was smaller
        than the largest one, which the reservation was for)."""
        self.memory.shrink(held.memory, nbytes)
        self._metrics.memory_reserved.dec(held.memory - nbytes)
        held.memory = nbytes

    def _check_size(self, size: int) -> None:
        if size > self._max_bytes:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"message is {size} bytes; this server accepts at most "
                           f"{self._max_bytes}")

    def _check(self, call: "_Call", context: grpc.ServicerContext) -> None:
        """What can be answered without classifying."""
        if context.time_remaining() <= 0:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED,
                           "the deadline passed before classification started")
        if self._holder.current is None:
            raise Rejected(grpc.StatusCode.UNAVAILABLE,
                           "no policy loaded yet; retry on another replica")
        if not call.raw:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           "message is empty: send the raw RFC 5322 message bytes")

    def _authenticate(self, call: "_Call", context: grpc.ServicerContext) -> None:
        """Sender authentication's DNS lookups, before the call queues for its turn (a
        slow answer then holds up only this call). Never fails the call: what DNS does not
        answer in time becomes a TEMPERROR result."""
        if self._authenticator is not None:
            call.evidence = gather_for(self._authenticator, self._holder.current, call.raw,
                                       call.envelope, call.mail_class, call.list_scope,
                                       _deadline_left(context))

    def _join_queue(self, held: _Held, size: int, recipients: int,
                    context: grpc.ServicerContext) -> None:
        """Deadline-aware: a call whose answer is expected after more than half of what is
        left of its deadline is refused now (the caller can go elsewhere) rather than left
        to time out — the estimate is rough, and the answer still has to travel back. The
        work is priced by the bytes parsed and the recipients looked up. A deadline too
        short for this message even on an idle server is DEADLINE_EXCEEDED, not a
        capacity rejection; "idle" is the cost model's starting point (what one core
        measures unloaded), not what it has learnt: a loaded server is at capacity, and
        its callers should go elsewhere (pricing by the learnt cost turned a burst of large
        messages under a load of 15 into deadline errors)."""
        remaining = _deadline_left(context)
        work = min(size, MAX_PARSE_BYTES) + self._recipient_cost * recipients
        if remaining is not None and \
                idle_seconds(work) > remaining * ADMISSION_DEADLINE_SHARE:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"the deadline leaves {remaining * 1000:.1f} ms, too little to "
                           "classify this message even on an idle server")
        held.turn, expected = self._turns.join(remaining, work)
        if remaining is not None and expected > remaining * ADMISSION_DEADLINE_SHARE:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"server at capacity (about {expected:.1f}s of work queued, the "
                           f"deadline leaves {remaining:.1f}s); retry on another replica",
                           at_capacity=True)

    def _release_message(self, held: _Held) -> None:
        """Give back what one message held (its place in the queue and its memory)."""
        if held.turn is not None:
            self._turns.leave(held.turn)
            held.turn = None
        if held.memory:
            self.memory.release(held.memory)
            self._metrics.memory_reserved.dec(held.memory)
            held.memory = 0

    def _release(self, held: _Held) -> None:
        self._release_message(held)
        if held.slot:
            self._slots.release()
            self._metrics.in_flight.dec()
            held.slot = False

    def _count(self, method: str, code: grpc.StatusCode, *, at_capacity: bool = False) -> None:
        if code is _OK:
            self._finished_ok[method].inc()
            return
        self._metrics.requests.labels(method, code.name).inc()
        if at_capacity:
            self._metrics.rejected.inc()

    # --- classification -----------------------------------------------------------------
    def _answer(self, held: _Held, call: "_Call", context: grpc.ServicerContext,
                method: str) -> filter_pb2.ClassifyResponse:
        turn = held.turn
        assert turn is not None, "a call is answered only once it holds a turn"
        if not self._turns.wait(turn, _deadline_left(context)):
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED,
                           "the deadline passed while the call waited for its turn")
        held.turn = None  # from here on `done` ends the turn
        policy = self._holder.current  # the latest, should a reload have happened meanwhile
        assert policy is not None, "the service is SERVING only once a policy is loaded"
        raw = call.raw
        started = time.perf_counter()
        try:
            verdict = policy.classify(raw, call.envelope, cpu_budget_seconds=self._cpu_budget,
                                      evidence=call.evidence)
            # in the turn: looking recipients up is work admission prices too
            suppression = self._suppression.check(call.recipients, call.mail_class,
                                                  call.list_scope)
        finally:
            self._turns.done(turn)
        response = _response(call.request_id, verdict)
        response.suppressed_recipients.extend(suppression.suppressed)
        response.unparseable_recipients.extend(suppression.unparseable)
        response.suppression_state = suppression.state
        response.suppression_age_seconds = suppression.age_seconds
        self._duration[method].observe(time.perf_counter() - started)
        self._verdicts[verdict.action].inc()
        if self._shadow is not None:
            self._shadow.offer(raw, call.envelope, call.evidence, verdict)
        if self._log_verdicts:
            self._log.debug("classified", extra={
                "request_id": shown(call.request_id), "action": verdict.action,
                "score": verdict.score, "policy_hash": verdict.policy_hash,
                "hits": [h.name for h in verdict.hits], "bytes": len(raw)})
        return response

    def _log_rejection(self, request_id: str, exc: Rejected) -> None:
        self._log.info("request rejected", extra={
            "request_id": shown(request_id), "code": exc.code.name, "reason": exc.details})


class _Announced:
    """Sizes a call announced in its metadata (None: not announced)."""

    __slots__ = ("request", "message")

    def __init__(self) -> None:
        self.request: int | None = None
        self.message: int | None = None


class _Call:
    """What classification needs of a request, without the request (which holds a copy of
    the message)."""

    __slots__ = ("request_id", "raw", "envelope", "recipients", "mail_class", "list_scope",
                 "evidence")

    def __init__(self, request: filter_pb2.ClassifyRequest) -> None:
        env = request.envelope
        self.request_id = request.request_id
        self.raw = request.message  # a copy (protobuf's upb makes one per read): read once
        self.recipients = tuple(env.recipients)
        self.envelope = Envelope(env.mail_from, self.recipients, env.client_ip, env.helo)
        self.mail_class = request.mail_class
        self.list_scope = request.list_scope
        self.evidence: Evidence | None = None  # set by _authenticate


def _size(value: str) -> int | None:
    """A size from call metadata: ASCII digits only (None otherwise; str.isdigit takes "²",
    which int() refuses, and a 5,000-digit number int() refuses too)."""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 15 else None


def _deadline_left(context: grpc.ServicerContext) -> float | None:
    """Seconds the call has left, or None without a deadline (gRPC then reports an enormous
    remaining time, which no lock or wait can take: OverflowError)."""
    remaining = context.time_remaining()
    if remaining is None or remaining >= threading.TIMEOUT_MAX:
        return None
    return max(0.0, remaining)


def _ended_early(context: grpc.ServicerContext) -> grpc.StatusCode:
    """How a call that ended without our answer is counted. The client's own deadline
    timer usually fires (and cancels) a moment before the server's copy of the deadline,
    so a cancellation this close to the deadline is the deadline."""
    return grpc.StatusCode.DEADLINE_EXCEEDED if context.time_remaining() < 0.25 \
        else grpc.StatusCode.CANCELLED


def _response(request_id: str, verdict: Verdict) -> filter_pb2.ClassifyResponse:
    return filter_pb2.ClassifyResponse(
        request_id=request_id, action=_ACTIONS[verdict.action], score=verdict.score,
        hits=[filter_pb2.RuleHit(name=h.name, score=h.score, description=h.description)
              for h in verdict.hits],
        spam_probability=verdict.spam_probability, policy_hash=verdict.policy_hash,
        authentication_results=verdict.authentication_results)


# --- in-process calls (filter_server/protocols) ---------------------------------------------
class LocalCall:
    """A message handed over in-process, with what a ClassifyRequest would carry."""

    __slots__ = ("request_id", "raw", "envelope", "recipients", "mail_class", "list_scope",
                 "evidence")

    def __init__(self, request_id: str, raw: bytes, envelope: Envelope, *,
                 mail_class: int = 0, list_scope: str = "") -> None:
        self.request_id = request_id
        self.raw = raw
        self.envelope = envelope
        self.recipients = envelope.recipients
        self.mail_class = mail_class
        self.list_scope = list_scope
        self.evidence: Evidence | None = None  # set by the servicer's _authenticate


class _LocalDeadline:
    """Stands in for a gRPC context where the servicer only asks for the time left."""

    __slots__ = ("_at",)

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds

    def time_remaining(self) -> float:
        return self._at - time.monotonic()


class Admission:
    """A call from inside the process (the mail-server protocols, filter_server/protocols):
    the same admission, classification, suppression and metrics as Classify, counted
    under `method`. Memory for the message is reserved as it arrives (a protocol may not
    know the size up front, and reads nothing it has not reserved for); the call slot and
    the deadline start once it has arrived (`classify`), because an MTA relays a message at
    its sender's pace: a slow sender must neither hold a slot nor spend the deadline. `close`
    gives everything back and counts the call; every failure is a Rejected with the gRPC
    code Classify would have answered, which the protocol maps to its own reply."""

    def __init__(self, servicer: FilterServicer, method: str, deadline_seconds: float) -> None:
        self._servicer = servicer
        self.method = method
        self._deadline_seconds = deadline_seconds
        self._held = _Held()
        self._received = 0
        self._code = _OK
        self._at_capacity = False
        self._answered = False
        self._closed = False

    def _failing(self, step, *args):  # noqa: ANN001, ANN202 - a servicer step
        try:
            return step(*args)
        except Rejected as exc:
            self._code, self._at_capacity = exc.code, exc.at_capacity
            self._servicer._log_rejection("", exc)
            raise
        except Exception:  # a bug: the protocol still answers (temporary), and it counts
            self._code = grpc.StatusCode.INTERNAL
            self._servicer._log.exception("classification failed", extra={
                "method": self.method})
            raise Rejected(grpc.StatusCode.INTERNAL, "internal error") from None

    def reserve(self, nbytes: int) -> None:
        """Reserve memory for `nbytes` more of the message before reading them, waiting at
        most a share of the deadline; Rejected (RESOURCE_EXHAUSTED) past the size limit or
        when the budget stays taken."""
        self._failing(self._reserve, nbytes)

    def try_reserve(self, nbytes: int) -> bool:
        """`reserve` without waiting: False when the budget has no room right now (then
        `reserve` waits for it). Never blocks, so an event loop may call it."""
        return self._failing(self._reserve, nbytes, False)

    def _reserve(self, nbytes: int, wait: bool = True) -> bool:
        servicer = self._servicer
        servicer._check_size(self._received + nbytes)
        extra = nbytes if self._held.memory else nbytes + HELD_OVERHEAD_BYTES
        timeout = self._deadline_seconds * MEMORY_WAIT_DEADLINE_SHARE
        if not servicer.memory.reserve(extra, timeout if wait else 0):
            if not wait:
                return False
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"server at capacity (its {servicer.memory.capacity >> 20} MiB for "
                           "messages in flight are taken); retry later", at_capacity=True)
        self._held.memory += extra
        self._received += nbytes
        servicer._metrics.memory_reserved.inc(extra)
        return True

    def classify(self, call: LocalCall) -> filter_pb2.ClassifyResponse:
        """Wait for the call's turn and classify; suppression as for Classify."""
        return self._failing(self._classify, call)

    def _classify(self, call: LocalCall) -> filter_pb2.ClassifyResponse:
        servicer = self._servicer
        if len(call.raw) > self._received:  # the caller read more than it reserved for
            self._reserve(len(call.raw) - self._received)
        servicer._take_slot(self._held)
        context = _LocalDeadline(self._deadline_seconds)
        servicer._check(call, context)  # type: ignore[arg-type]
        servicer._authenticate(call, context)  # type: ignore[arg-type]
        servicer._join_queue(self._held, len(call.raw), len(call.recipients),
                             context)  # type: ignore[arg-type]
        response = servicer._answer(self._held, call, context,  # type: ignore[arg-type]
                                    self.method)
        self._answered = True
        return response

    def close(self) -> None:
        """Give back the slot, memory and turn, and count the call: CANCELLED when it ended
        with neither an answer nor a refusal (the peer went away or broke the protocol)."""
        if self._closed:
            return
        self._closed = True
        if not self._answered and self._code is _OK:
            self._code = grpc.StatusCode.CANCELLED
        self._servicer._release(self._held)
        self._servicer._count(self.method, self._code, at_capacity=self._at_capacity)
