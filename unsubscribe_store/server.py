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
import resource
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mailwarden.fingerprints import FORGOTTEN_PREFIX, FingerprintKey
from mailwarden.keepalive import SERVER_PING_OPTIONS
from mailwarden.tls import server_credentials
from mailwarden.tokens import KeyRing
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from unsubscribe_store import metrics
from unsubscribe_store.access import AccessPolicy
from unsubscribe_store.artifact import DEFAULT_REFRESH_CHANGES, FingerprintArtifact
from unsubscribe_store.handlers import add_servicer
from unsubscribe_store.http_guard import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    GuardedSite,
    default_max_connections,
)
from unsubscribe_store.model import Readiness, StoreMisconfigured, StoreUnavailable
from unsubscribe_store.oneclick import DEFAULT_ANSWER_SECONDS, build_app
from unsubscribe_store.service import (
    DEFAULT_MAX_SNAPSHOTS,
    DEFAULT_SEND_TIMEOUT,
    ServerState,
    UnsubscribeService,
)
from unsubscribe_store.store import Store

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["UnsubscribeStore"].full_name
# After answering a request whose body was not read (a body timeout), aiohttp drains what
# the client still sends for this long before closing (its default: 10 s more per client).
LINGER_SECONDS = 2.0


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
    tls_dir: Path | None = None  # gRPC over TLS (tls.crt, tls.key; ca.crt for client certs)
    require_client_cert: bool = False
    max_concurrent_snapshots: int = DEFAULT_MAX_SNAPSHOTS
    watch_send_timeout_seconds: float = DEFAULT_SEND_TIMEOUT
    http_header_timeout: float = DEFAULT_HEADER_TIMEOUT
    http_body_timeout: float = DEFAULT_BODY_TIMEOUT
    oneclick_answer_seconds: float = DEFAULT_ANSWER_SECONDS
    http_max_connections: int = 0          # 0: from the descriptor limit (http_guard)
    # The key shared with the filter pods: with it the store builds and serves the
    # fingerprint snapshot they start from (FingerprintSnapshot); without, they stream a
    # Watch snapshot. The file lives in fingerprint_dir (None: a temporary directory).
    fingerprint_key: FingerprintKey | None = None
    fingerprint_dir: Path | None = None
    fingerprint_refresh_changes: int = DEFAULT_REFRESH_CHANGES
    # Compaction (Store.compact) every compact_seconds (0: never): change-log rows older
    # than retain_changes_days *and* more than retain_changes behind the head, and
    # idempotency keys older than retain_idempotency_days.
    compact_seconds: float = 3600.0
    retain_changes_days: float = 7.0
    retain_changes: int = 100_000
    retain_idempotency_days: float = 7.0


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} must be HOST:PORT (PORT 0 picks a free port)")
    if int(port) > 65535:
        raise ValueError(f"address {address!r}: port {int(port)} is out of range (0-65535)")
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
                 access: AccessPolicy | None = None) -> None:
        self.store = store
        self.config = config
        self._artifact_tmp: str | None = None
        artifact = None
        if config.fingerprint_key is not None:
            directory = config.fingerprint_dir
            if directory is None:
                self._artifact_tmp = tempfile.mkdtemp(prefix="mailwarden-fingerprints-")
                directory = Path(self._artifact_tmp)
            directory.mkdir(parents=True, exist_ok=True)
            artifact = FingerprintArtifact(store, config.fingerprint_key, directory,
                                           refresh_changes=config.fingerprint_refresh_changes)
        self.state = ServerState(store, access=access,
                                 max_concurrent_snapshots=config.max_concurrent_snapshots,
                                 send_timeout=config.watch_send_timeout_seconds,
                                 artifact=artifact)
        self.health = health_aio.HealthServicer()
        self.ports: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._metrics_httpd: Any = None  # prometheus_client's WSGI server, when serving
        self._prebuild: asyncio.Task | None = None
        self._compactor: asyncio.Task | None = None
        self.fatal = ""  # why the server stopped by itself (a store that can never open)

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
            *SERVER_PING_OPTIONS,  # the same as the filter server's
        ])
        add_servicer(UnsubscribeService(self.state), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self._grpc)
        try:
            if cfg.tls_dir is not None:
                credentials = server_credentials(cfg.tls_dir, cfg.require_client_cert, log)
                self.ports["grpc"] = self._grpc.add_secure_port(cfg.grpc_address, credentials)
            else:
                self.ports["grpc"] = self._grpc.add_insecure_port(cfg.grpc_address)
        except RuntimeError:
            self.ports["grpc"] = 0
        if not self.ports["grpc"]:
            raise OSError(f"{cfg.grpc_address} (gRPC) is not available (in use?)")
        await self._set_health(False, "starting: connecting to the store")
        await self._grpc.start()

        app = build_app(self.state, cfg.keys, max_age_days=cfg.token_max_age_days,
                        body_timeout=cfg.http_body_timeout,
                        answer_seconds=cfg.oneclick_answer_seconds) \
            if cfg.keys else _probe_only_app(self.state)
        # Paths carry tokens: no access log. A request head must be complete within the
        # header timeout, which is what aiohttp's keep-alive timer enforces (see http_guard).
        self._runner = web.AppRunner(app, access_log=None,
                                     keepalive_timeout=cfg.http_header_timeout,
                                     lingering_time=LINGER_SECONDS,
                                     shutdown_timeout=cfg.grace_seconds)
        await self._runner.setup()
        sock = _bind(cfg.http_address)
        self.ports["http"] = sock.getsockname()[1]
        max_connections = cfg.http_max_connections or default_max_connections(
            resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        await GuardedSite(self._runner, sock, max_connections=max_connections).start()

        if cfg.metrics_address:
            from prometheus_client import start_http_server
            host, port = split_address(cfg.metrics_address)
            self._metrics_httpd, _ = start_http_server(port, addr=host)
            self.ports["metrics"] = self._metrics_httpd.server_port
        if cfg.ports_file:
            tmp = Path(cfg.ports_file + ".tmp")
            tmp.write_text(json.dumps(self.ports | {"pid": os.getpid()}))
            tmp.replace(cfg.ports_file)
        log.info("listening: grpc %d, http %d (at most %d connections)%s", self.ports["grpc"],
                 self.ports["http"], max_connections,
                 f", metrics {self.ports['metrics']}" if "metrics" in self.ports else "")

    async def _open_store(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self.store.open(migrate=self.config.migrate)
                return
            except StoreUnavailable as exc:
                await self._set_health(False, str(exc))
            except StoreMisconfigured as exc:  # retrying cannot help: stop, saying why
                self.fatal = str(exc)
                await self._set_health(False, str(exc))
                self._stop.set()
                return
            except Exception as exc:  # never a silent "connecting" forever
                await self._set_health(False, f"store failed to open: "
                                              f"{type(exc).__name__}: {str(exc)[:300]}")
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 10.0)

    async def _watch_readiness(self) -> None:
        metrics.STORE_INFO.labels(self.store.backend, self.store.durability).set(1)
        await self._open_store()
        if self.state.artifact is not None and not self._stop.is_set():
            await self._check_forgotten_key(self.state.artifact.key)
        self.state.feed.start()
        if self.config.compact_seconds > 0:
            self._compactor = asyncio.create_task(self._compact_loop(), name="compaction")
        if self.state.artifact is not None:
            # Built once the store is open, so the first filter pod does not wait for it.
            self._prebuild = asyncio.create_task(self._build_artifact(), name="fingerprints")
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

    async def _check_forgotten_key(self, key: FingerprintKey) -> None:
        """Refuse a fingerprint key other than the one forgotten suppressions are kept
        under: with it they could not be matched, so erasing the key would silently end
        those people's objections."""
        prefix = f"{FORGOTTEN_PREFIX}{key.key_id.hex()}:"
        while not self._stop.is_set():
            try:
                other = await self.store.forgotten_under_other_keys(prefix)
                break
            except StoreUnavailable as exc:
                await self._set_health(False, str(exc))
                await asyncio.sleep(1.0)
        else:
            return
        if other:
            self.fatal = (f"{other} forgotten suppressions are kept under another fingerprint "
                          f"key than --fingerprint-key-file's (id {key.key_id.hex()}): they "
                          "would no longer suppress anyone. Keep the key they were forgotten "
                          "under (docs/unsubscribe.md, fingerprint key rotation)")
            await self._set_health(False, self.fatal)
            self._stop.set()

    async def _compact_loop(self) -> None:
        cfg = self.config
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), cfg.compact_seconds)
                return
            except asyncio.TimeoutError:
                pass
            now = datetime.now(timezone.utc)
            try:
                done = await self.store.compact(
                    keep_changes=cfg.retain_changes,
                    changes_before=now - timedelta(days=cfg.retain_changes_days),
                    keys_before=now - timedelta(days=cfg.retain_idempotency_days))
            except StoreUnavailable as exc:
                log.warning("compaction skipped: %s", exc)
                continue
            except Exception:  # never let housekeeping stop the server
                log.exception("compaction failed")
                continue
            metrics.COMPACTED_CHANGES.inc(done.changes)
            metrics.COMPACTED_KEYS.inc(done.idempotency_keys)
            if done.changes or done.idempotency_keys:
                log.info("compacted: %d change-log rows (the log now starts after sequence "
                         "%d), %d idempotency keys", done.changes, done.floor,
                         done.idempotency_keys)

    async def _build_artifact(self) -> None:
        assert self.state.artifact is not None
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self.state.artifact.current()
                return
            except StoreUnavailable as exc:
                log.warning("fingerprint snapshot not built yet: %s", exc)
            except Exception:  # a request builds it too; never kill the readiness loop
                log.exception("fingerprint snapshot build failed")
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, 30.0)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT. Raises OSError when a listener cannot be opened and
        StoreMisconfigured when the store can never open (both after a clean shutdown)."""
        try:
            await self.start()
        except BaseException:
            if self._grpc is not None:
                await self._grpc.stop(0)
            if self._runner is not None:
                await self._runner.cleanup()
            if self._metrics_httpd is not None:
                self._metrics_httpd.shutdown()
            raise
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        watcher = asyncio.create_task(self._watch_readiness(), name="readiness")
        await self._stop.wait()
        # Drain: fail health first so load balancers stop sending, then stop accepting.
        log.info("stopping: health NOT_SERVING, draining for %.1fs", self.config.drain_seconds)
        self.state.draining = True
        await self.health.enter_graceful_shutdown()
        if not self.fatal:  # nothing was ever served: nothing to drain
            await asyncio.sleep(self.config.drain_seconds)
        watcher.cancel()
        try:
            await watcher
        except (asyncio.CancelledError, Exception):
            pass
        await self.state.feed.stop()
        if self._grpc is not None:
            await self._grpc.stop(self.config.grace_seconds)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
        for task in (self._prebuild, self._compactor):
            if task is not None:
                task.cancel()
        await self.store.close()
        if self._artifact_tmp is not None:
            shutil.rmtree(self._artifact_tmp, ignore_errors=True)
        log.info("stopped")
        if self.fatal:
            raise StoreMisconfigured(self.fatal)


def _probe_only_app(state: ServerState) -> web.Application:
    from unsubscribe_store.oneclick import STATE_KEY, healthz, readyz
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
