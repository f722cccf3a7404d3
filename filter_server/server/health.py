"""The standard `grpc.health.v1.Health` service (Check and Watch) for the filter server's
thread-pool gRPC server, in place of grpcio-health-checking's `HealthServicer`.

Why not the library's: its servicer sends a status while holding its one lock, and a send
on this server blocks until gRPC's single polling thread reports it complete. That thread
also runs the close callback of every Watch stream that ends, and the library's callback
takes the same lock. A Watch starting (sending its first status under the lock) while
another ends (a client reconnecting: every connection is closed at the maximum connection
age, and every client-side health check keeps a Watch per connection) deadlocks the whole
server: no call, health check or reflection request is answered again. The fault suite's
long barrage froze a pod that way, and `tests/filter_server/server/test_health_watch.py` freezes a
server in about a second with it (upstream report: grpc/grpc pull request 43403, open).

Here the lock guards only the statuses and the set of open streams and is never held while
sending; the close callback never waits for a send. Sends to one stream are serialized and
always carry the latest status, so a stream never ends up showing an older one. Watch is
non-blocking (`experimental_non_blocking`): an open stream holds no thread of the pool.
"""

from __future__ import annotations

import threading
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# A grpc.health.v1 HealthCheckResponse.ServingStatus value (protobuf enums are ints).
Status = int
SERVING: Status = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Status = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: Status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OVERALL = ""  # the service name that stands for the whole server

SendCallback = Callable[[health_pb2.HealthCheckResponse | None], None]


class _Watch:
    """One open Watch stream."""

    __slots__ = ("service", "send", "sending", "sent", "ended")

    def __init__(self, service: str, send: SendCallback) -> None:
        self.service = service
        self.send = send              # blocks until gRPC has sent the message
        self.sending = threading.Lock()  # one send at a time on this stream
        self.sent: Status | None = None
        self.ended = False


class HealthServicer(health_pb2_grpc.HealthServicer):
    """Serving status per service name; `set` and `enter_graceful_shutdown` as in
    grpcio-health-checking, without its deadlock (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # statuses and open streams; never held while sending
        self._statuses: dict[str, Status] = {OVERALL: SERVING}
        self._watches: dict[str, set[_Watch]] = {}
        self._shutting_down = False

    # --- RPCs ---------------------------------------------------------------------------
    def Check(self, request: health_pb2.HealthCheckRequest,
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        with self._lock:
            status = self._statuses.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext,
              send_response_callback: SendCallback | None = None) -> None:
        if send_response_callback is None:  # only a server without non-blocking streams
            raise RuntimeError("Watch needs gRPC's non-blocking server streaming")
        watch = _Watch(request.service, send_response_callback)
        with self._lock:
            self._watches.setdefault(watch.service, set()).add(watch)
        if not context.add_callback(lambda: self._end(watch)):
            self._end(watch)  # the call ended before the callback could be added
            return
        self._push(watch)

    # The server then passes send_response_callback and keeps no thread for the stream.
    Watch.experimental_non_blocking = True  # type: ignore[attr-defined]

    # --- status changes -----------------------------------------------------------------
    def set(self, service: str, status: Status) -> None:
        """Set `service`'s status and tell its open Watch streams (ignored once shutting
        down, so nothing can report SERVING again during the drain)."""
        with self._lock:
            if self._shutting_down:
                return
            self._statuses[service] = status
            watches = list(self._watches.get(service, ()))
        for watch in watches:
            self._push(watch)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING from now on, for good."""
        with self._lock:
            if self._shutting_down:
                return
            self._shutting_down = True
            for service in self._statuses:
                self._statuses[service] = NOT_SERVING
            watches = [w for group in self._watches.values() for w in group]
        for watch in watches:
            self._push(watch)

    # --- streams ------------------------------------------------------------------------
    def _push(self, watch: _Watch) -> None:
        """Send the stream its service's current status, unless that is what it has."""
        with watch.sending:
            with self._lock:
                if watch.ended:
                    return
                status = self._statuses.get(watch.service, SERVICE_UNKNOWN)
            if status != watch.sent:
                watch.send(health_pb2.HealthCheckResponse(status=status))
                watch.sent = status

    def _end(self, watch: _Watch) -> None:
        """The stream ended. Runs on gRPC's polling thread, so it must never wait for a
        send: it takes only the short lock."""
        with self._lock:
            watch.ended = True
            group = self._watches.get(watch.service)
            if group is not None:
                group.discard(watch)
                if not group:
                    del self._watches[watch.service]
        watch.send(None)  # finishes the call if gRPC has not (it never waits)
