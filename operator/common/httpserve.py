"""The operator's own HTTP endpoints, on dual-stack listeners.

- `GET /healthz` (liveness): kopf's event loop answers its own liveness endpoint, which
  listens on loopback only; this one forwards its verdict.
- `GET /readyz` (readiness): the same, and the admission webhook accepts connections. The
  API server calls the webhook through its Service, whose endpoints are the ready replicas,
  so a replica whose webhook listener is not up must not be one of them.
- `GET /metrics` (Prometheus), on its own port.

Why not kopf's and prometheus_client's servers directly: kopf's liveness server offers no
way to add a route, and both bind one address family (asyncio sets IPV6_V6ONLY on `::`),
so an IPv4-only or IPv6-only cluster could not reach one of them. `::` here accepts IPv4
and IPv6 alike; a host without IPv6 falls back to 0.0.0.0.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import urllib.request
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("mailwarden.operator.http")

# A check: None when fine, else why not.
Check = Callable[[], "str | None"]
# A route: (status, content type, body).
Route = Callable[[], "tuple[int, str, bytes]"]
CHECK_TIMEOUT_SECONDS = 2.0
ALL_INTERFACES = "::"


def connect_host(address: str) -> str:
    """Where to connect to reach a listener bound to `address` (a wildcard: loopback)."""
    if address in ("", "0.0.0.0"):
        return "127.0.0.1"
    if address == "::":
        return "::1" if ipv6_available() else "127.0.0.1"
    return address


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def http_ok(url: str) -> Check:
    def check() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT_SECONDS) as response:
                return None if response.status == 200 else f"{url} answered {response.status}"
        except Exception as exc:  # refused, timeout, HTTP error: not fine
            return f"{url}: {exc}"
    return check


def accepts_connections(host: str, port: int) -> Check:
    def check() -> str | None:
        try:
            with socket.create_connection((host, port), timeout=CHECK_TIMEOUT_SECONDS):
                return None
        except OSError as exc:
            return f"nothing accepts connections on {host} port {port}: {exc}"
    return check


def checks_route(checks: dict[str, Check]) -> Route:
    def route() -> tuple[int, str, bytes]:
        failures = [f"{name}: {why}" for name, check in checks.items()
                    if (why := check()) is not None]
        body = "ok\n" if not failures else "\n".join(failures) + "\n"
        return (200 if not failures else 503), "text/plain; charset=utf-8", body.encode()
    return route


def metrics_route() -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        route = self.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
            return
        status, content_type, body = route()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # probes and scrapes every few seconds: not worth a log line each


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, family: int) -> None:
        self.address_family = family
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # `::` serves IPv4 too (dual stack), whatever the host's default.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class HttpEndpoints:
    """A threaded HTTP server for `routes` on `address`:`port`, started at once."""

    def __init__(self, address: str, port: int, routes: dict[str, Route],
                 name: str = "http") -> None:
        handler = type("Handler", (_Handler,), {"routes": dict(routes)})
        if address == ALL_INTERFACES and not ipv6_available():
            address = "0.0.0.0"
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.server = _Server((address, port), handler, family)
        self.thread = threading.Thread(target=self.server.serve_forever, name=name,
                                       daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
