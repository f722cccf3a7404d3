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

from filter_server.engine.compiled import Envelope, Verdict
from filter_server.message import MAX_PARSE_BYTES
from filter_server.server.cost import CostModel
from filter_server.server.memory import MemoryBudget
from filter_server.server.metrics import FilterMetrics
from filter_server.server.policy import PolicyHolder
from filter_server.server.suppression import SuppressionProvider
from filter_server.server.turns import Turn, TurnQueue
from mailwarden.filter.v1 import filter_pb2
from mailwarden.wire import MESSAGE_BYTES_METADATA

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
# A ClassifyStream without a deadline waits at most this long for memory per message.
STREAM_MEMORY_WAIT_SECONDS = 5.0
_ACTIONS: dict[str, int] = {
    name: filter_pb2.Action.Value(name) for name in ("ACCEPT", "TAG", "QUARANTINE", "REJECT")}
_OK = grpc.StatusCode.OK


class Rejected(Exception):
    """A request the service answers with a non-OK status; `at_capacity` when the worker
    was too busy (counted in the capacity-rejection metric)."""

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
    handlers = {
        "Classify": grpc.stream_unary_rpc_method_handler(
            servicer.Classify, request_deserializer=filter_pb2.ClassifyRequest.FromString,
            response_serializer=filter_pb2.ClassifyResponse.SerializeToString),
        "ClassifyStream": grpc.stream_stream_rpc_method_handler(
            servicer.ClassifyStream,
            request_deserializer=filter_pb2.ClassifyRequest.FromString,
            response_serializer=filter_pb2.ClassifyResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                          handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class FilterServicer:
    def __init__(self, holder: PolicyHolder, metrics: FilterMetrics, log: logging.Logger, *,
                 suppression: SuppressionProvider, max_message_bytes: int,
                 max_concurrent_rpcs: int, memory: MemoryBudget) -> None:
        self._holder = holder
        self._metrics = metrics
        self._log = log
        self._suppression = suppression
        self._max_bytes = max_message_bytes
        self._capacity = max_concurrent_rpcs
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
        self._duration = {m: metrics.duration.labels(m) for m in
                          ("Classify", "ClassifyStream")}
        self._verdicts = {a: metrics.verdicts.labels(a) for a in _ACTIONS}
        # The series every successful call updates, looked up once (labels() takes a lock
        # and builds a key per call).
        self._finished_ok = {m: metrics.requests.labels(m, _OK.name) for m in
                             ("Classify", "ClassifyStream")}

    # --- RPCs ---------------------------------------------------------------------------
    def Classify(self, request_iterator: Iterator[filter_pb2.ClassifyRequest],
                 context: grpc.ServicerContext) -> filter_pb2.ClassifyResponse:
        """One message (a unary call; see add_filter_service). Admission runs before the
        message is received: a call slot, then memory to receive it into."""
        held = _Held()
        code = _OK
        at_capacity = False
        request_id = ""
        try:
            self._take_slot(held)
            announced = _announced_size(context)
            if announced is not None:  # an oversized message is refused before it is sent
                self._check_size(announced)
            self._reserve_memory(held, self.receive_reservation(announced), context)
            request = next(request_iterator, None)
            if request is None:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               "no request message: Classify takes exactly one")
            call = _Call(request)
            del request  # it holds a copy of the message too
            request_id, raw = call.request_id, call.raw
            if announced is not None and len(raw) > announced:
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                               f"message is {len(raw)} bytes but the call announced "
                               f"{announced} ({MESSAGE_BYTES_METADATA})")
            self._keep_memory(held, len(raw) + HELD_OVERHEAD_BYTES)
            self._check_size(len(raw))
            self._check(call, context)
            self._join_queue(held, len(raw), context)
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
            self._log.exception("classification failed", extra={"request_id": request_id})
            context.abort(code, f"internal error (request_id {request_id!r})")
            raise
        finally:
            self._release(held)
            self._count("Classify", code, at_capacity=at_capacity)

    def ClassifyStream(self, request_iterator: Iterator[filter_pb2.ClassifyRequest],
                       context: grpc.ServicerContext) -> Iterator[filter_pb2.ClassifyResponse]:
        """One message at a time, so responses come back in request order. A stream's
        messages are received as it iterates: each reserves memory once received (an idle
        stream, waiting for its client's next message, must not hold a reservation)."""
        held = _Held()
        code = _OK
        failure: Rejected | None = None
        try:
            self._take_slot(held)
            for request in request_iterator:
                call = _Call(request)
                del request  # it holds a copy of the message too
                request_id, raw = call.request_id, call.raw
                try:
                    self._check_size(len(raw))
                    self._reserve_memory(held, len(raw) + HELD_OVERHEAD_BYTES, context,
                                         no_deadline_wait=STREAM_MEMORY_WAIT_SECONDS)
                    self._check(call, context)
                    self._join_queue(held, len(raw), context)
                    response = self._answer(held, call, context, "ClassifyStream")
                except Rejected as exc:
                    self._log_rejection(request_id, exc)
                    failure = Rejected(exc.code, f"request_id {request_id!r}: {exc.details}",
                                       at_capacity=exc.at_capacity)
                    break
                finally:
                    self._release_message(held)
                yield response
            if not context.is_active():  # the request stream "ended" by cancellation
                code = _ended_early(context)  # (best effort: gRPC may not know yet)
        except Rejected as exc:  # no slot
            failure = exc
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
            self._release(held)
            self._count("ClassifyStream", code, at_capacity=failure is not None
                        and failure.at_capacity)
        if failure is not None:
            context.abort(failure.code, failure.details)

    # --- admission ----------------------------------------------------------------------
    def _take_slot(self, held: _Held) -> None:
        if not self._slots.acquire(blocking=False):
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"server at capacity ({self._capacity} calls in flight); retry on "
                           "another replica", at_capacity=True)
        held.slot = True
        self._metrics.in_flight.inc()

    def _reserve_memory(self, held: _Held, nbytes: int, context: grpc.ServicerContext, *,
                        no_deadline_wait: float | None = None) -> None:
        """Reserve `nbytes` of the memory budget, waiting at most a share of the call's
        deadline for others to give some back."""
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
        """Room to receive a message: of the size the call announced, else of the largest
        one this server accepts."""
        size = self._max_bytes if announced is None else min(announced, self._max_bytes)
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

    def _join_queue(self, held: _Held, size: int, context: grpc.ServicerContext) -> None:
        """Deadline-aware: a call whose answer is expected after more than half of what is
        left of its deadline is refused now (the caller can go elsewhere) rather than left
        to time out — the estimate is rough, and the answer still has to travel back."""
        remaining = _deadline_left(context)
        held.turn, expected = self._turns.join(remaining, min(size, MAX_PARSE_BYTES))
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
            verdict = policy.classify(raw, call.envelope)
        finally:
            self._turns.done(turn)
        suppression = self._suppression.check(call.recipients, call.mail_class,
                                              call.list_scope)
        response = _response(call.request_id, verdict)
        response.suppressed_recipients.extend(suppression.suppressed)
        response.unparseable_recipients.extend(suppression.unparseable)
        response.suppression_state = suppression.state
        response.suppression_age_seconds = suppression.age_seconds
        self._duration[method].observe(time.perf_counter() - started)
        self._verdicts[verdict.action].inc()
        if self._log_verdicts:
            self._log.debug("classified", extra={
                "request_id": call.request_id, "action": verdict.action,
                "score": verdict.score, "policy_hash": verdict.policy_hash,
                "hits": [h.name for h in verdict.hits], "bytes": len(raw)})
        return response

    def _log_rejection(self, request_id: str, exc: Rejected) -> None:
        self._log.info("request rejected", extra={
            "request_id": request_id, "code": exc.code.name, "reason": exc.details})


class _Call:
    """What classification needs of a request, without the request (which holds a copy of
    the message)."""

    __slots__ = ("request_id", "raw", "envelope", "recipients", "mail_class", "list_scope")

    def __init__(self, request: filter_pb2.ClassifyRequest) -> None:
        env = request.envelope
        self.request_id = request.request_id
        self.raw = request.message  # a copy (protobuf's upb makes one per read): read once
        self.recipients = tuple(env.recipients)
        self.envelope = Envelope(env.mail_from, self.recipients, env.client_ip, env.helo)
        self.mail_class = request.mail_class
        self.list_scope = request.list_scope


def _announced_size(context: grpc.ServicerContext) -> int | None:
    """The message size the caller announced in MESSAGE_BYTES_METADATA (our client always
    does), or None."""
    for key, value in context.invocation_metadata() or ():
        if key == MESSAGE_BYTES_METADATA:
            return int(value) if value.isdigit() else None
    return None


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
        spam_probability=verdict.spam_probability, policy_hash=verdict.policy_hash)
