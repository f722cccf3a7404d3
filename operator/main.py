"""Run the operator: kopf with the handlers (SpamPolicy and UnsubscribeStore), peering for
HA, webhook, probes, metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from mailwarden_operator.common import metrics
from mailwarden_operator.common.certwatch import CertWatcher
from mailwarden_operator.common.diffbase import SpecDigestDiffBaseStorage
from mailwarden_operator.common.httpserve import (
    ALL_INTERFACES,
    HttpEndpoints,
    accepts_connections,
    checks_route,
    connect_host,
    http_ok,
    metrics_route,
)
from mailwarden_operator.common.informer import CachingKube, InformerThreads, start_informers
from mailwarden_operator.common.kube import Kube, api_client_from_environment
from mailwarden_operator.common.naming import MANAGED_BY, MANAGED_BY_LABEL
from mailwarden_operator.common.render import RenderSettings
from mailwarden_operator.handlers import build_registry
from mailwarden_operator.resync import Resync
from mailwarden_operator.spampolicy.reconcile import DEFAULT_KEEP_CONFIGMAPS, Reconciler
from mailwarden_operator.unsubscribestore.reconcile import StoreReconciler

log = logging.getLogger("mailwarden.operator")

# Priorities decide which peer is active: the earliest-started replica wins and keeps
# winning, so a restarted replica joins as the standby instead of taking over.
PRIORITY_BASE = 10**13


def startup_priority(now: float | None = None) -> int:
    return PRIORITY_BASE - int((time.time() if now is None else now) * 1000)


def own_identity() -> str:
    """This replica's peering identity: the pod name plus a random part, so a restarted pod
    never mistakes its dead predecessor's record for its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}/{uuid.uuid4().hex[:8]}"


@dataclass
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)   # empty: all namespaces
    filter_image: str = RenderSettings.default_image
    resync_seconds: float = 60.0
    keep_configmaps: int = DEFAULT_KEEP_CONFIGMAPS
    # Watch-fed child caches (operator/common/informer.py); off: every read asks the API
    # server (`--no-informer-cache`).
    informer_cache: bool = True
    peering: str | None = "mailwarden"                    # None: standalone
    peering_lifetime: int = 15
    priority: int | None = None                           # None: by start time
    liveness_port: int = 8080
    metrics_port: int = 9100
    webhook_port: int = 9443
    webhook_cert_dir: Path | None = None                  # tls.crt + tls.key
    webhook_insecure: bool = False                        # plain HTTP (local testing)
    listen_address: str = ALL_INTERFACES                  # `::`: IPv4 and IPv6
    watch_server_timeout: int = 300
    watch_client_timeout: int = 330
    api_timeout: float = 30.0
    kubeconfig: str | None = None

    @property
    def webhook_enabled(self) -> bool:
        return self.webhook_port > 0 and (self.webhook_cert_dir is not None
                                          or self.webhook_insecure)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def webhook_bind_address(listen_address: str) -> str | None:
    """kopf's webhook address: `::` becomes None, which aiohttp binds on every interface
    of both families (an explicit `::` would be IPv6 only there)."""
    return None if listen_address == ALL_INTERFACES else listen_address


def start_endpoints(config: OperatorConfig, kopf_liveness: str) -> list[HttpEndpoints]:
    """/healthz and /readyz on the liveness port, /metrics on the metrics port."""
    servers = []
    if config.liveness_port > 0:
        alive = http_ok(kopf_liveness)
        ready = {"kopf": alive}
        if config.webhook_enabled:
            ready["webhook"] = accepts_connections(connect_host(config.listen_address),
                                                   config.webhook_port)
        servers.append(HttpEndpoints(config.listen_address, config.liveness_port, {
            "/healthz": checks_route({"kopf": alive}), "/readyz": checks_route(ready)},
            name="health"))
    if config.metrics_port > 0:
        servers.append(HttpEndpoints(config.listen_address, config.metrics_port,
                                     {"/metrics": metrics_route}, name="metrics"))
    return servers


def run(config: OperatorConfig) -> int:
    holder: dict[str, Any] = {}
    registry = build_registry(lambda: holder["reconciler"], webhook=config.webhook_enabled,
                              get_store_reconciler=lambda: holder["store"])
    priority = config.priority if config.priority is not None else startup_priority()
    identity = own_identity()
    threads: list[Resync | CertWatcher | InformerThreads] = []

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: object) -> None:
        # Watches must end and restart on their own: a stream behind a load balancer can
        # hang silently forever otherwise.
        settings.watching.server_timeout = config.watch_server_timeout
        settings.watching.client_timeout = config.watch_client_timeout
        settings.watching.connect_timeout = 30
        settings.networking.request_timeout = config.api_timeout
        settings.networking.connect_timeout = 30
        # kopf's bookkeeping in annotations of our own prefix; status stays ours.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="kopf.mailwarden.dev")
        # A digest of the spec, not a copy: large policies must fit the 256 KiB limit on
        # annotations (common/diffbase.py).
        settings.persistence.diffbase_storage = SpecDigestDiffBaseStorage(
            prefix="kopf.mailwarden.dev", key="last-handled-configuration")
        # Watch only our own children, filtered by the API server: not every Deployment
        # of the cluster (kopf's handler label filters are applied client-side).
        settings.watching.label_selectors["apps", "deployments"] = \
            f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        settings.persistence.finalizer = "mailwarden.dev/operator"
        # Only warnings become Events (the reconciler posts its own on transitions).
        settings.posting.level = logging.WARNING
        settings.execution.max_workers = 16
        settings.peering.lifetime = config.peering_lifetime
        settings.peering.mandatory = config.peering is not None
        if config.webhook_enabled:
            settings.admission.server = kopf.WebhookServer(
                addr=webhook_bind_address(config.listen_address), port=config.webhook_port,
                certfile=str(config.webhook_cert_dir / "tls.crt")
                if config.webhook_cert_dir else None,
                pkeyfile=str(config.webhook_cert_dir / "tls.key")
                if config.webhook_cert_dir else None,
                insecure=config.webhook_insecure)
        def count_write(verb: str, kind: str) -> None:
            metrics.API_WRITES.labels(verb, kind).inc()

        kube: Kube
        if config.informer_cache:
            kube = CachingKube(api_client_from_environment(config.kubeconfig),
                               timeout=config.api_timeout, on_write=count_write)
            start_informers(kube, config.namespaces or None)
            threads.append(InformerThreads(kube))
        else:
            kube = Kube(api_client_from_environment(config.kubeconfig),
                        timeout=config.api_timeout, on_write=count_write)
        render_settings = RenderSettings(default_image=config.filter_image)
        holder["reconciler"] = Reconciler(kube, render_settings,
                                          keep_configmaps=config.keep_configmaps)
        holder["store"] = StoreReconciler(
            kube, render_settings,
            on_ready_changed=lambda ns, name: holder["reconciler"].reconcile_referencing(
                ns, name))
        resync = Resync(holder["reconciler"], kube, interval=config.resync_seconds,
                        namespaces=config.namespaces, peering=config.peering,
                        identity=identity, priority=priority,
                        store_reconciler=holder["store"])
        resync.start()
        threads.append(resync)
        if config.webhook_enabled and config.webhook_cert_dir is not None:
            watcher = CertWatcher(config.webhook_cert_dir)
            watcher.start()
            threads.append(watcher)
        log.info("operator starting: peering=%s priority=%s namespaces=%s",
                 config.peering or "standalone", priority, config.namespaces or "all")

    @kopf.on.cleanup(registry=registry)
    def stop_threads(**_: object) -> None:
        for thread in threads:
            thread.stop()

    # kopf's own liveness endpoint stays on loopback; ours (dual-stack) forward it.
    liveness = (f"http://127.0.0.1:{free_loopback_port()}/healthz"
                if config.liveness_port > 0 else None)
    endpoints = start_endpoints(config, liveness or "")
    try:
        return _run_kopf(config, registry, priority, identity, liveness)
    finally:
        for server in endpoints:
            server.stop()


def _run_kopf(config: OperatorConfig, registry: kopf.OperatorRegistry, priority: int,
              identity: str, liveness: str | None) -> int:
    asyncio.run(kopf.operator(
        registry=registry,
        standalone=config.peering is None,
        peering_name=config.peering,
        priority=priority,
        identity=identity,  # type: ignore[arg-type]  # kopf's Identity: a NewType of str
        liveness_endpoint=liveness,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
    ))
    return 0
