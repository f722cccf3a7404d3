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
from filter_server.server.metrics import FilterMetrics
from filter_server.server.policy import PolicyHolder
from filter_server.server.suppression import SuppressionProvider
from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc

SERVICE_NAME = filter_pb2.DESCRIPTOR.services_by_name["Filter"].full_name
# Calls classifying at the same moment in one worker process; the other admitted calls
# wait, blocked (not competing for the interpreter lock). Classification is CPU-bound
# Python: many threads at once only fight over the lock and starve gRPC's polling thread,
# which then stops taking new calls in — they queue unseen in the gRPC core until their
# deadlines pass, and admission control never gets to answer RESOURCE_EXHAUSTED (measured
# by tests/fault: above capacity, calls ended in DEADLINE_EXCEEDED instead).
CLASSIFY_CONCURRENCY = 1
# Admission estimates the work queued ahead of a call in "units": a message's size in
# bytes plus a fixed overhead per message (parsing a message costs about its size; a
# stream's messages are not known yet, so a stream counts as one overhead). The seconds a
# unit takes is a running average, refined by every classification.
UNIT_OVERHEAD_BYTES = 128 * 1024  # measured: a small message costs about what 128 KiB adds
INITIAL_SECONDS_PER_UNIT = 2e-8
# A call is admitted only if its expected wait is within this share of its deadline.
ADMISSION_DEADLINE_SHARE = 0.5
_ACTIONS = {name: filter_pb2.Action.Value(name) for name in
            ("ACCEPT", "TAG", "QUARANTINE", "REJECT")}
_OK = grpc.StatusCode.OK


class Rejected(Exception):
    """A request the service answers with a non-OK status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class FilterServicer(filter_pb2_grpc.FilterServicer):
    def __init__(self, holder: PolicyHolder, metrics: FilterMetrics, log: logging.Logger, *,
                 suppression: SuppressionProvider, max_message_bytes: int,
                 max_concurrent_rpcs: int) -> None:
        self._holder = holder
        self._metrics = metrics
        self._log = log
        self._suppression = suppression
        self._max_bytes = max_message_bytes
        self._capacity = max_concurrent_rpcs
        # Admission control of our own (not only the gRPC core's maximum_concurrent_rpcs):
        # it applies to Filter calls only, so health checks keep headroom under overload.
        self._slots = threading.BoundedSemaphore(max_concurrent_rpcs)
        self._cpu = threading.BoundedSemaphore(CLASSIFY_CONCURRENCY)
        self._queued_units = 0
        self._admitted_lock = threading.Lock()
        self._seconds_per_unit = INITIAL_SECONDS_PER_UNIT
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
    def Classify(self, request: filter_pb2.ClassifyRequest,
                 context: grpc.ServicerContext) -> filter_pb2.ClassifyResponse:
        if len(request.message) > self._max_bytes:  # refused before it counts as queued work
            self._reject_oversized("Classify", request, context)
        units = len(request.message) + UNIT_OVERHEAD_BYTES
        self._admit("Classify", context, units)
        code = _OK
        try:
            return self._answer(request, context, "Classify")
        except Rejected as exc:
            code = exc.code
            self._log_rejection(request, exc)
            context.abort(exc.code, exc.details)
            raise  # not reached: abort raises
        except Exception:
            code = grpc.StatusCode.INTERNAL
            self._log.exception("classification failed",
                                extra={"request_id": request.request_id})
            context.abort(code, f"internal error (request_id {request.request_id!r})")
            raise
        finally:
            self._release("Classify", code, units)

    def ClassifyStream(self, request_iterator: Iterator[filter_pb2.ClassifyRequest],
                       context: grpc.ServicerContext) -> Iterator[filter_pb2.ClassifyResponse]:
        self._admit("ClassifyStream", context, UNIT_OVERHEAD_BYTES)
        code = _OK
        failure: Rejected | None = None
        try:
            # One message at a time, so responses come back in request order.
            for request in request_iterator:
                try:
                    response = self._answer(request, context, "ClassifyStream")
                except Rejected as exc:
                    self._log_rejection(request, exc)
                    failure = Rejected(exc.code, f"request_id {request.request_id!r}: "
                                       f"{exc.details}")
                    break
                yield response
            if not context.is_active():  # the request stream "ended" by cancellation
                code = _ended_early(context)  # (best effort: gRPC may not know yet)
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
            self._release("ClassifyStream", code, UNIT_OVERHEAD_BYTES)
        if failure is not None:
            context.abort(failure.code, failure.details)

    # --- helpers ------------------------------------------------------------------------
    def _admit(self, method: str, context: grpc.ServicerContext, units: int) -> None:
        if not self._slots.acquire(blocking=False):
            self._reject_at_capacity(method, context, f"server at capacity ({self._capacity} "
                                     "calls in flight); retry on another replica")
        with self._admitted_lock:
            ahead = self._queued_units
            self._queued_units += units
        # Deadline-aware: a call that would spend more than half its deadline waiting for
        # its turn is refused now (the caller can go elsewhere) rather than left to time
        # out — the estimate is rough, and the answer still has to travel back.
        wait = ahead / CLASSIFY_CONCURRENCY * self._seconds_per_unit
        remaining = context.time_remaining()
        if remaining is not None and wait > remaining * ADMISSION_DEADLINE_SHARE:
            with self._admitted_lock:
                self._queued_units -= units
            self._slots.release()
            self._reject_at_capacity(
                method, context, f"server at capacity (about {wait:.1f}s of work queued, "
                f"the deadline leaves {remaining:.1f}s); retry on another replica")
        self._metrics.in_flight.inc()

    def _reject_oversized(self, method: str, request: filter_pb2.ClassifyRequest,
                          context: grpc.ServicerContext) -> None:
        exc = Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"message is {len(request.message)} bytes; this server accepts at most "
                       f"{self._max_bytes}")
        self._log_rejection(request, exc)
        self._metrics.requests.labels(method, exc.code.name).inc()
        context.abort(exc.code, exc.details)

    def _reject_at_capacity(self, method: str, context: grpc.ServicerContext,
                            details: str) -> None:
        self._metrics.rejected.inc()
        self._metrics.requests.labels(method, "RESOURCE_EXHAUSTED").inc()
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, details)

    def _release(self, method: str, code: grpc.StatusCode, units: int) -> None:
        self._metrics.in_flight.dec()
        with self._admitted_lock:
            self._queued_units -= units
        self._slots.release()
        if code is _OK:
            self._finished_ok[method].inc()
        else:
            self._metrics.requests.labels(method, code.name).inc()

    def _answer(self, request: filter_pb2.ClassifyRequest, context: grpc.ServicerContext,
                method: str) -> filter_pb2.ClassifyResponse:
        if context.time_remaining() <= 0:
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED,
                           "the deadline passed before classification started")
        policy = self._holder.current
        if policy is None:
            raise Rejected(grpc.StatusCode.UNAVAILABLE,
                           "no policy loaded yet; retry on another replica")
        raw = request.message
        if not raw:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           "message is empty: send the raw RFC 5322 message bytes")
        if len(raw) > self._max_bytes:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"message is {len(raw)} bytes; this server accepts at most "
                           f"{self._max_bytes}")
        env = request.envelope
        if not self._cpu.acquire(timeout=_wait_limit(context.time_remaining())):
            raise Rejected(grpc.StatusCode.DEADLINE_EXCEEDED,
                           "the deadline passed while the call waited for its turn")
        try:
            started = time.perf_counter()
            verdict = policy.classify(raw, Envelope(env.mail_from, tuple(env.recipients),
                                                    env.client_ip, env.helo))
        finally:
            self._cpu.release()
        # A running average, for the admission estimate (a race here only blurs it).
        self._seconds_per_unit += 0.1 * ((time.perf_counter() - started)
                                         / (len(raw) + UNIT_OVERHEAD_BYTES)
                                         - self._seconds_per_unit)
        suppression = self._suppression.check(env.recipients, request.mail_class,
                                              request.list_scope)
        response = _response(request.request_id, verdict)
        response.suppressed_recipients.extend(suppression.suppressed)
        response.suppression_state = suppression.state
        response.suppression_age_seconds = suppression.age_seconds
        self._duration[method].observe(time.perf_counter() - started)
        self._verdicts[verdict.action].inc()
        if self._log_verdicts:
            self._log.debug("classified", extra={
                "request_id": request.request_id, "action": verdict.action,
                "score": verdict.score, "policy_hash": verdict.policy_hash,
                "hits": [h.name for h in verdict.hits], "bytes": len(raw)})
        return response

    def _log_rejection(self, request: filter_pb2.ClassifyRequest, exc: Rejected) -> None:
        self._log.info("request rejected", extra={
            "request_id": request.request_id, "code": exc.code.name, "reason": exc.details})


def _wait_limit(remaining: float | None) -> float | None:
    """A lock timeout for the time a call has left. A call without a deadline reports an
    enormous remaining time, which the lock cannot take (OverflowError): no limit then."""
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
