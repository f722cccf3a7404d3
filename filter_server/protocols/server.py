"""The mail-server protocol listeners of one worker process, on one asyncio event loop in
its own thread.

Why asyncio, not a thread per connection: an MTA keeps a milter connection open for a whole
SMTP session, mostly idle, and a stalled or hostile peer must cost nothing but a socket — a
thread each would put hundreds of idle threads beside the classification thread. The loop
only reads and writes; every step that may block (waiting for memory in the budget, for
the call's turn, classifying) runs on a small thread pool through the servicer's own
admission (`servicer.Admission`), exactly as a gRPC call does.

Lifecycle (the worker's, filter_server/server/worker.py): listeners open once the gRPC
server has started; before a policy is loaded every message is refused as temporary
(Classify's UNAVAILABLE). On SIGTERM they keep serving through the drain, like gRPC; then
the listeners close, connections finish what they are doing within the grace period, and
those still open then are closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from filter_server.protocols.verdict import MtaOptions
from filter_server.server.policy import PolicyHolder
from filter_server.server.ports import listening_socket
from filter_server.server.servicer import Admission, FilterServicer, LocalCall
from mailwarden.filter.v1 import filter_pb2

PROTOCOLS = ("milter", "spamd", "rspamd")
# Room for request lines and headers of spamd and Rspamd requests (a line longer than
# this is a protocol error, not a buffer that grows).
LINE_LIMIT_BYTES = 64 * 1024
# Memory is reserved for a message in pieces of at most this size as it arrives.
RESERVE_STEP_BYTES = 256 * 1024


class ProtocolError(Exception):
    """The peer broke its protocol (or timed out): answered, where the protocol has a way
    to say so, then the connection is closed. `reason` labels the error metric."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class ProtocolMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.connections = Counter(
            "mailwarden_filter_protocol_connections_total", "Connections accepted on a "
            "mail-server protocol port", ["protocol"], registry=registry)
        self.open = Gauge(
            "mailwarden_filter_protocol_open_connections", "Mail-server protocol "
            "connections open now", ["protocol"], multiprocess_mode="livesum",
            registry=registry)
        self.commands = Counter(
            "mailwarden_filter_protocol_commands_total", "Requests by protocol and command "
            "(milter: messages; spamd: CHECK, SYMBOLS, ...; rspamd: checkv2, ping, ...)",
            ["protocol", "command"], registry=registry)
        self.errors = Counter(
            "mailwarden_filter_protocol_errors_total", "Connections ended by a protocol "
            "error: malformed or truncated input, too large, timeout, too many "
            "connections", ["protocol", "reason"], registry=registry)
        self.recipients_removed = Counter(
            "mailwarden_filter_milter_recipients_removed_total", "Suppressed recipients the "
            "milter removed from the envelope (mta.removeSuppressedRecipients)",
            registry=registry)
        for protocol in PROTOCOLS:
            self.connections.labels(protocol)
            self.open.labels(protocol)


@dataclass(frozen=True)
class Limits:
    """Per-connection bounds, from `mailwarden serve` flags."""
    idle_seconds: float          # longest wait for the peer's next bytes
    deadline_seconds: float      # a message's deadline once it is in (admission, queue)
    max_connections: int         # per worker and protocol
    max_message_bytes: int


class Classifier:
    """The servicer's in-process path, awaitable from the event loop."""

    def __init__(self, servicer: FilterServicer, holder: PolicyHolder, pool: ThreadPoolExecutor,
                 deadline_seconds: float, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._servicer = servicer
        self._holder = holder
        self._pool = pool
        self._deadline = deadline_seconds

    def options(self) -> MtaOptions:
        policy = self._holder.current
        return MtaOptions.of(policy.policy if policy is not None else None)

    def admit(self, method: str) -> Admission:
        """A new call (its slot is taken when the message is in: Admission)."""
        return Admission(self._servicer, method, self._deadline)

    async def reserve(self, admission: Admission, nbytes: int) -> None:
        """Memory for `nbytes` more of a message: at once when the budget has room (the
        usual case: no thread hop per header or body chunk), else waiting on the pool."""
        if nbytes > 0 and not admission.try_reserve(nbytes):
            await asyncio.get_running_loop().run_in_executor(self._pool, admission.reserve,
                                                             nbytes)

    async def classify(self, admission: Admission, call: LocalCall
                       ) -> filter_pb2.ClassifyResponse:
        return await asyncio.get_running_loop().run_in_executor(self._pool,
                                                                admission.classify, call)


class Connection:
    """One accepted connection: reads bounded by the idle timeout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 limits: Limits, stopping: asyncio.Event) -> None:
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.stopping = stopping
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")

    async def _timed(self, what: str, awaitable: Awaitable[bytes]) -> bytes:
        # asyncio.timeout, not wait_for: wait_for wraps every read in a new Task, which
        # cost the milter path (a packet per header) a third of its CPU.
        try:
            async with asyncio.timeout(self.limits.idle_seconds):
                return await awaitable
        except TimeoutError:
            raise ProtocolError(f"nothing received for {self.limits.idle_seconds:g} s while "
                                f"waiting for {what}", "timeout") from None
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError(f"connection closed in the middle of {what} "
                                f"({len(exc.partial)} of {exc.expected} bytes)",
                                "truncated") from None
        except asyncio.LimitOverrunError:
            raise ProtocolError(f"{what} is longer than {LINE_LIMIT_BYTES} bytes",
                                "too_large") from None
        except (ConnectionError, OSError) as exc:
            raise ProtocolError(f"connection lost while waiting for {what}: {exc}",
                                "truncated") from None

    async def exactly(self, n: int, what: str) -> bytes:
        return await self._timed(what, self.reader.readexactly(n))

    async def some(self, most: int, what: str) -> bytes:
        """Up to `most` bytes, as soon as any are there; b"" at the end of the stream."""
        return await self._timed(what, self.reader.read(most))

    async def line(self, what: str, *, eof_ok: bool = False) -> bytes:
        """One line with its ending; b"" at a clean end of stream when `eof_ok`."""
        data = await self._timed(what, self.reader.readuntil(b"\n")) if not eof_ok else \
            await self._timed(what, self._line_or_eof())
        return data

    async def _line_or_eof(self) -> bytes:
        try:
            return await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return b""

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            async with asyncio.timeout(self.limits.idle_seconds):
                await self.writer.drain()
        except TimeoutError:
            raise ProtocolError("the peer stopped reading our reply", "timeout") from None
        except (ConnectionError, OSError) as exc:
            raise ProtocolError(f"connection lost while replying: {exc}", "truncated") \
                from None


async def receive_body(conn: Connection, classifier: Classifier, admission: Admission,
                       length: int, what: str) -> bytes:
    """`length` bytes of message, each piece read only once the memory for it is reserved
    (an oversized or capacity-refused message is refused before it is read)."""
    parts: list[bytes] = []
    left = length
    while left > 0:
        step = min(left, RESERVE_STEP_BYTES)
        await classifier.reserve(admission, step)
        parts.append(await conn.exactly(step, what))
        left -= step
    return b"".join(parts)


async def receive_to_end(conn: Connection, classifier: Classifier, admission: Admission,
                         what: str) -> bytes:
    """A message of unannounced length, up to the end of the peer's stream (its half
    close). Each piece is at most what the connection's reader holds already (its buffer
    is bounded), and memory for it is reserved before the next read: a message over the
    size limit is refused as soon as it passes the limit."""
    parts: list[bytes] = []
    while piece := await conn.some(RESERVE_STEP_BYTES, what):
        await classifier.reserve(admission, len(piece))
        parts.append(piece)
    return b"".join(parts)


Handler = Callable[[Connection], Awaitable[None]]


class ProtocolServers:
    """The listeners of one worker. `start` binds (raising OSError with the reason) and
    returns the bound ports; `stop` closes them and ends connections within the grace."""

    def __init__(self, *, host: str, ports: dict[str, int], reuse_port: bool,
                 servicer: FilterServicer, holder: PolicyHolder, log: logging.Logger,
                 limits: Limits, threads: int,
                 metrics: ProtocolMetrics | None = None) -> None:
        self.host = host
        self.wanted = {p: port for p, port in ports.items() if port is not None}
        self.reuse_port = reuse_port
        self.log = log
        self.limits = limits
        self.metrics = metrics or ProtocolMetrics()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="protocol")
        self.classifier = Classifier(servicer, holder, self.pool, limits.deadline_seconds,
                                     limits.max_message_bytes)
        self.bound: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._open: dict[str, int] = {p: 0 for p in PROTOCOLS}
        self._stopping: asyncio.Event | None = None

    def _handler(self, protocol: str) -> Callable[[Connection], Awaitable[None]]:
        from filter_server.protocols import milter, rspamd_http, spamd

        module = {"milter": milter, "spamd": spamd, "rspamd": rspamd_http}[protocol]
        return lambda conn: module.serve(conn, self.classifier, self.metrics, self.log)

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> dict[str, int]:
        sockets = {}
        try:
            for protocol, port in self.wanted.items():
                sockets[protocol] = listening_socket(self.host, port, self.reuse_port)
        except OSError:
            for sock in sockets.values():
                sock.close()
            raise
        self._thread = threading.Thread(target=self._loop.run_forever, name="protocols",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(sockets), self._loop).result()
        return dict(self.bound)

    async def _listen(self, sockets: dict[str, socket.socket]) -> None:
        self._stopping = asyncio.Event()
        for protocol, sock in sockets.items():
            server = await asyncio.start_server(
                functools.partial(self._accept, protocol, self._handler(protocol)),
                sock=sock, limit=LINE_LIMIT_BYTES)
            self._servers.append(server)
            self.bound[protocol] = sock.getsockname()[1]

    async def _accept(self, protocol: str, handler: Handler, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._stopping is not None
        self._tasks.add(task)
        self.metrics.connections.labels(protocol).inc()
        conn = Connection(reader, writer, self.limits, self._stopping)
        try:
            if self._open[protocol] >= self.limits.max_connections:
                self.metrics.errors.labels(protocol, "too_many_connections").inc()
                self.log.warning("protocol connection refused: too many open", extra={
                    "protocol": protocol, "peer": conn.peer,
                    "max_connections": self.limits.max_connections})
                return
            self._open[protocol] += 1
            self.metrics.open.labels(protocol).inc()
            try:
                await handler(conn)
            except ProtocolError as exc:
                self.metrics.errors.labels(protocol, exc.reason).inc()
                self.log.info("protocol error; connection closed", extra={
                    "protocol": protocol, "peer": conn.peer, "reason": str(exc)})
            except asyncio.CancelledError:  # the grace period ended
                pass
            except Exception:
                self.metrics.errors.labels(protocol, "internal").inc()
                self.log.exception("protocol handler failed", extra={
                    "protocol": protocol, "peer": conn.peer})
            finally:
                self._open[protocol] -= 1
                self.metrics.open.labels(protocol).dec()
        finally:
            writer.close()
            self._tasks.discard(task)

    def stop(self, grace_seconds: float) -> None:
        """Stop listening; connections get `grace_seconds` to finish, then are closed."""
        if self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._stop(grace_seconds), self._loop)
        try:
            future.result(grace_seconds + 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self.pool.shutdown(wait=False, cancel_futures=True)
            self._thread = None

    async def _stop(self, grace_seconds: float) -> None:
        assert self._stopping is not None
        self._stopping.set()
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + grace_seconds
        while self._tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
