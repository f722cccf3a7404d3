"""Limits of the one-click HTTP listener: what one client can hold, and what gets logged.

The endpoint faces the internet (mailbox providers POST to it), so it must survive clients
that open connections and never finish a request (issue 20, item 6):

- **Header timeout**: a connection must deliver a complete request head within
  ``header_timeout`` seconds of opening (or of its previous response); otherwise it is
  closed. aiohttp's keep-alive timer covers exactly "no complete request yet", so it is set
  to this value. (Its default, about an hour, let 2,000 half-sent requests sit open.)
- **Body timeout**: the one-click handler reads its body within ``body_timeout`` seconds or
  answers 408 (see ``oneclick``).
- **Connection cap**: at most ``max_connections`` connections at once. A new connection
  over the cap closes the connection that has been silent longest — an idle or half-sent
  one, since a request being answered has just sent its bytes — so a flood of idle
  connections cannot lock real one-click requests out, and descriptors stay free for gRPC.
- **Logging**: a client that disconnects, times out or sends a malformed request is one
  debug line and a metric, never an ERROR traceback; nothing logged or echoed quotes the
  request line, which carries the token.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import resource
from http import HTTPStatus
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError

from unsubscribe_store import metrics

log = logging.getLogger("unsubscribe_store.http")

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 10.0
# Descriptors kept for everything but HTTP connections: gRPC clients (filter pods, senders),
# the database pool, the metrics listener, files.
_RESERVED_DESCRIPTORS = 256
_DEFAULT_MAX_CONNECTIONS = 1024
_TOKEN_PATH = re.compile(r"/u/[^\s'\"?#]*")


def redact(text: str) -> str:
    """``text`` with any one-click token path replaced."""
    return _TOKEN_PATH.sub("/u/<token>", text)


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard limit (as Go programs do at start);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections(descriptor_limit: int) -> int:
    """HTTP connections allowed by default: half of what the descriptor limit leaves after
    a reserve, at most 1024 (the issue's 1,100 idle connections exhausted a 1,024 limit
    and took gRPC down with them)."""
    if descriptor_limit == resource.RLIM_INFINITY:
        return _DEFAULT_MAX_CONNECTIONS
    return max(16, min(_DEFAULT_MAX_CONNECTIONS,
                       (descriptor_limit - _RESERVED_DESCRIPTORS) // 2))


def _client_gone(exc: BaseException | None) -> bool:
    return isinstance(exc, (ConnectionError, asyncio.CancelledError))


class QuietRequestHandler(web_protocol.RequestHandler):
    """aiohttp's request handler with this module's logging rules: errors caused by the
    client are debug lines without the request line, error pages never echo the request."""

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException) and (_client_gone(exc)
                                               or isinstance(exc, HttpProcessingError)):
            self._client_error(exc)
            return
        message = args[0] if args else "error"
        log.error("%s", redact(str(message) % args[1:] if len(args) > 1 else str(message)),
                  exc_info=exc)

    def _client_error(self, exc: BaseException) -> None:
        if _client_gone(exc):
            metrics.HTTP_REJECTED.labels("disconnected").inc()
            log.debug("client disconnected mid-request (%s)", type(exc).__name__)
        else:
            metrics.HTTP_REJECTED.labels("malformed").inc()
            # The parser's message quotes the request line, token and all: not repeated.
            log.debug("rejected a malformed request (%s)", type(exc).__name__)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status == 500 and exc is not None and not _client_gone(exc):
            log.error("error answering %s %s", request.method, redact(request.path),
                      exc_info=exc)
        elif exc is not None:
            self._client_error(exc)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error page")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ \
            else "Error"
        response = web.Response(status=status, text=f"{status} {phrase}\n",
                                content_type="text/plain")
        response.force_close()
        return response


class _Counted(asyncio.Protocol):
    """Wraps one connection's request handler to keep the guard's books."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.guard._opened(self)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.guard._active(self)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard._closed(self)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionGuard:
    """Protocol factory for ``loop.create_server``: at most ``max_connections`` at once;
    a connection over the cap closes the one that has been silent longest."""

    def __init__(self, server: web.Server, max_connections: int) -> None:
        self.server = server
        self.max_connections = max_connections
        # connection -> None, least recently active first
        self._connections: collections.OrderedDict[_Counted, None] = collections.OrderedDict()

    def __call__(self) -> asyncio.Protocol:
        # The server's own factory would build aiohttp's RequestHandler; ours logs and
        # answers errors by this module's rules, with the server's settings.
        inner = QuietRequestHandler(self.server, loop=self.server._loop,  # noqa: SLF001
                                    **self.server._kwargs)
        return _Counted(self, inner)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def _opened(self, conn: _Counted) -> None:
        while len(self._connections) >= self.max_connections:
            oldest, _ = self._connections.popitem(last=False)
            metrics.HTTP_REJECTED.labels("evicted").inc()
            log.debug("connection cap %d reached: closing the connection silent longest",
                      self.max_connections)
            if oldest.transport is not None:
                oldest.transport.abort()  # type: ignore[attr-defined]
        self._connections[conn] = None
        metrics.HTTP_CONNECTIONS.set(len(self._connections))

    def _active(self, conn: _Counted) -> None:
        if conn in self._connections:
            self._connections.move_to_end(conn)

    def _closed(self, conn: _Counted) -> None:
        self._connections.pop(conn, None)
        metrics.HTTP_CONNECTIONS.set(len(self._connections))


class GuardedSite(web.SockSite):
    """``web.SockSite`` whose connections go through a ConnectionGuard."""

    def __init__(self, runner: web.BaseRunner, sock: Any, *, max_connections: int,
                 **kwargs: Any) -> None:
        super().__init__(runner, sock, **kwargs)
        self.max_connections = max_connections
        self.guard: ConnectionGuard | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; SockSite.start would listen
        server = self._runner.server
        assert server is not None, "the runner is set up before its sites start"
        self.guard = ConnectionGuard(server, self.max_connections)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.guard, sock=self._sock,
                                                backlog=self._backlog)
