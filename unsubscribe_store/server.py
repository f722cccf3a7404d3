"""The unsubscribe server process: gRPC (store API, health, reflection), the one-click HTTP
endpoint and Prometheus metrics, on one asyncio loop.

Start-up order: listeners open at once (health says NOT_SERVING with a reason), then the
store connects and applies migrations — retried until the database answers — and only when
the store reports Ready (for ``durability: replicated``: a synchronous standby is in sync)
does health turn SERVING. Readiness is re-checked every few seconds. On SIGTERM health turns
NOT_SERVING at once, in-flight calls get a grace period, then the process exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mailwarden.tokens import KeyRing
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from unsubscribe_store import metrics
from unsubscribe_store.model import Readiness, StoreUnavailable
from unsubscribe_store.oneclick import build_app
from unsubscribe_store.service import ServerState, UnsubscribeService
from unsubscribe_store.store import Store

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["UnsubscribeStore"].full_name


@dataclass
class ServerConfig:
    grpc_address: str = "0.0.0.0:50061"
    http_address: str = "0.0.0.0:8080"
    metrics_address: str = "0.0.0.0:9091"  # "" disables the metrics listener
    keys: KeyRing | None = None            # None: no one-click endpoint (HTTP serves probes)
    token_max_age_days: int = 0
    migrate: bool = True
    readiness_interval: float = 2.0
    drain_seconds: float = 2.0             # NOT_SERVING before we stop accepting calls
    grace_seconds: float = 10.0            # then in-flight calls get this long
    max_connection_age_seconds: float = 300.0
    ports_file: str = ""


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} must be HOST:PORT (PORT 0 picks a free port)")
    return host.strip("[]") or "0.0.0.0", int(port)


def _bind(address: str) -> socket.socket:
    host, port = split_address(address)
    if host == "::" and not socket.has_ipv6:
        host = "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # IPv6 disabled in this kernel: `::` means every IPv4 address then
        if host != "::":
            raise
        host, sock = "0.0.0.0", socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sock.family == socket.AF_INET6 and host == "::":
        # `[::]` serves IPv4 and IPv6 (dual stack), whatever the host's default.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"{address}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class UnsubscribeServer:
    def __init__(self, store: Store, config: ServerConfig, *,
                 resubscribe_token: bytes | None = None) -> None:
        self.store = store
        self.config = config
        self.state = ServerState(store, resubscribe_token=resubscribe_token)
        self.health = health_aio.HealthServicer()
        self.ports: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._metrics_httpd: Any = None  # prometheus_client's WSGI server, when serving

    async def _set_health(self, ready: bool, reason: str) -> None:
        changed = (ready, reason) != (self.state.ready, self.state.reason)
        self.state.ready, self.state.reason = ready, reason
        metrics.READY.set(1 if ready else 0)
        status = (health_pb2.HealthCheckResponse.SERVING if ready and not self.state.draining
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if changed:
            if ready:
                log.info("store ready (backend=%s, durability=%s, highly_available=%s)",
                         self.store.backend, self.store.durability, self.store.highly_available)
            else:
                log.warning("store not ready: %s", reason)

    async def start(self) -> None:
        cfg = self.config
        age_ms = int(cfg.max_connection_age_seconds * 1000)
        self._grpc = grpc.aio.server(options=[
            # Clients re-resolve when a connection ages out, so new replicas get traffic.
            ("grpc.max_connection_age_ms", age_ms),
            ("grpc.max_connection_age_grace_ms", int(cfg.grace_seconds * 1000)),
            ("grpc.so_reuseport", 0),
        ])
        pb_grpc.add_UnsubscribeStoreServicer_to_server(UnsubscribeService(self.state), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self._grpc)
        try:
            self.ports["grpc"] = self._grpc.add_insecure_port(cfg.grpc_address)
        except RuntimeError:
            self.ports["grpc"] = 0
        if not self.ports["grpc"]:
            raise OSError(f"{cfg.grpc_address} (gRPC) is not available (in use?)")
        await self._set_health(False, "starting: connecting to the store")
        await self._grpc.start()

        app = build_app(self.state, cfg.keys, max_age_days=cfg.token_max_age_days) \
            if cfg.keys else _probe_only_app(self.state)
        self._runner = web.AppRunner(app, access_log=None)  # paths carry tokens: no access log
        await self._runner.setup()
        sock = _bind(cfg.http_address)
        self.ports["http"] = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, shutdown_timeout=cfg.grace_seconds).start()

        if cfg.metrics_address:
            from prometheus_client import start_http_server
            host, port = split_address(cfg.metrics_address)
            self._metrics_httpd, _ = start_http_server(port, addr=host)
            self.ports["metrics"] = self._metrics_httpd.server_port
        if cfg.ports_file:
            tmp = Path(cfg.ports_file + ".tmp")
            tmp.write_text(json.dumps(self.ports | {"pid": os.getpid()}))
            tmp.replace(cfg.ports_file)
        log.info("listening: grpc %d, http %d%s", self.ports["grpc"], self.ports["http"],
                 f", metrics {self.ports['metrics']}" if "metrics" in self.ports else "")

    async def _open_store(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self.store.open(migrate=self.config.migrate)
                return
            except StoreUnavailable as exc:
                await self._set_health(False, str(exc))
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 10.0)

    async def _watch_readiness(self) -> None:
        metrics.STORE_INFO.labels(self.store.backend, self.store.durability).set(1)
        await self._open_store()
        while not self._stop.is_set():
            try:
                readiness = await self.store.readiness()
            except Exception as exc:  # never leave health stuck on an unexpected error
                log.exception("readiness check failed")
                readiness = Readiness(False, f"readiness check failed: {exc}")
            self.state.sync_standbys = readiness.sync_standbys
            metrics.SYNC_STANDBYS.set(readiness.sync_standbys)
            metrics.REPLICATION_LAG.set(readiness.replication_lag_seconds)
            await self._set_health(readiness.ready, readiness.reason)
            try:
                metrics.HEAD.set(await self.store.head())
            except StoreUnavailable:
                pass
            try:
                await asyncio.wait_for(self._stop.wait(), self.config.readiness_interval)
            except asyncio.TimeoutError:
                pass

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        watcher = asyncio.create_task(self._watch_readiness(), name="readiness")
        await self._stop.wait()
        # Drain: fail health first so load balancers stop sending, then stop accepting.
        log.info("stopping: health NOT_SERVING, draining for %.1fs", self.config.drain_seconds)
        self.state.draining = True
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.config.drain_seconds)
        watcher.cancel()
        try:
            await watcher
        except (asyncio.CancelledError, Exception):
            pass
        if self._grpc is not None:
            await self._grpc.stop(self.config.grace_seconds)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
        await self.store.close()
        log.info("stopped")


def _probe_only_app(state: ServerState) -> web.Application:
    from unsubscribe_store.oneclick import STATE_KEY, healthz, readyz
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
