"""Periodic resync of every UnsubscribeStore and SpamPolicy, on the active replica only.

It corrects drift and notices model ConfigMaps that appeared after their SpamPolicy. It is
a plain thread rather than a kopf timer because kopf timers put a finalizer on every
SpamPolicy, which would make deleting one impossible while the operator is down.

Which replica is active is kopf peering's decision; this thread reads the same peering
object and applies the same rule (the live peer with the highest priority is active), so it
runs where kopf's handlers run. A disagreement at a hand-over is harmless: reconciles are
idempotent.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Any

from mailwarden_operator.common import metrics
from mailwarden_operator.common.kube import (
    SPAMPOLICIES,
    UNSUBSCRIBESTORES,
    Kube,
    KubeError,
    Resource,
)
from mailwarden_operator.spampolicy.reconcile import Reconciler
from mailwarden_operator.unsubscribestore.reconcile import StoreReconciler

log = logging.getLogger("mailwarden.operator.resync")

CLUSTER_PEERING = Resource("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering",
                           namespaced=False)
NAMESPACED_PEERING = Resource("kopf.dev", "v1", "kopfpeerings", "KopfPeering")


def _alive(info: dict[str, Any], now: datetime.datetime) -> bool:
    try:
        lastseen = datetime.datetime.fromisoformat(str(info["lastseen"]))
        if lastseen.tzinfo is None:
            lastseen = lastseen.replace(tzinfo=datetime.UTC)
        return lastseen + datetime.timedelta(seconds=float(info.get("lifetime", 60))) > now
    except (KeyError, ValueError, TypeError):
        return False


def is_active(peering: dict[str, Any] | None, identity: str, priority: int,
              now: datetime.datetime | None = None) -> bool:
    """kopf's rule: active when present and no live peer has the same or a higher
    priority."""
    if peering is None:
        return False
    now = now or datetime.datetime.now(datetime.UTC)
    peers = peering.get("status") or {}
    if identity not in peers:
        return False
    return not any(other != identity and isinstance(info, dict) and _alive(info, now)
                   and int(info.get("priority", 0)) >= priority
                   for other, info in peers.items())


class Resync(threading.Thread):
    def __init__(self, reconciler: Reconciler, kube: Kube, *, interval: float,
                 namespaces: list[str], peering: str | None, identity: str,
                 priority: int, store_reconciler: StoreReconciler | None = None,
                 canary_interval: float | None = None) -> None:
        super().__init__(name="resync", daemon=True)
        self.reconciler = reconciler
        self.store_reconciler = store_reconciler
        self.kube = kube
        self.interval = interval
        # Between full resyncs, SpamPolicies with a canary in progress (status.canary) are
        # reconciled this often: their guards are judged at each reconcile, so this bounds
        # the time from a bad canary step to its rollback.
        self.canary_interval = min(canary_interval or interval, interval)
        self.namespaces = namespaces
        self.peering = peering
        self.identity = identity
        self.priority = priority
        self.stopping = threading.Event()
        self._missing_crd_reported = False

    def active(self) -> bool:
        if self.peering is None:
            return True
        if self.namespaces:
            where = f"KopfPeering {self.namespaces[0]}/{self.peering}"
            body = self.kube.get(NAMESPACED_PEERING, self.namespaces[0], self.peering)
        else:
            where = f"ClusterKopfPeering {self.peering}"
            body = self.kube.get(CLUSTER_PEERING, None, self.peering)
        if body is None:
            # kopf waits silently for a missing peering object; say why nothing happens.
            log.error("%s does not exist: this replica stays idle until it does (the Helm "
                      "chart creates it; without the chart create it, or run with "
                      "--standalone for a single replica)", where)
        return is_active(body, self.identity, self.priority)

    def run(self) -> None:
        try:
            self.active()  # report a missing peering object at once
        except KubeError as exc:
            log.warning("cannot read the peering object: %s", exc)
        inactive_rounds = 0
        last_full = time.monotonic()
        while not self.stopping.wait(self.canary_interval):
            full = time.monotonic() - last_full >= self.interval - 0.001
            try:
                if not full:
                    if self.active():
                        self.check_canaries()
                    continue
                last_full = time.monotonic()
                if self.active():
                    inactive_rounds = 0
                    self.resync_all()
                else:
                    # The active replica exports the per-policy series; ours would go stale.
                    # Two rounds in a row: a peering record that lags a moment behind must
                    # not make the active replica drop its own series.
                    inactive_rounds += 1
                    if inactive_rounds == 2:
                        metrics.forget_all()
            except KubeError as exc:
                log.warning("resync skipped: %s", exc)
            except Exception:  # keep the thread alive; the next round retries
                log.exception("resync failed")

    def resync_all(self) -> None:
        # Stores first: SpamPolicies then see their stores' fresh status.
        if self.store_reconciler is not None:
            try:
                self._resync(UNSUBSCRIBESTORES, self.store_reconciler.reconcile)
            except KubeError as exc:
                # One kind failing (typically: its CRD is missing, since `helm upgrade`
                # does not add new CRDs) must not stop the other's resync.
                if exc.status == 404 and not self._missing_crd_reported:
                    self._missing_crd_reported = True
                    log.error("UnsubscribeStores cannot be listed (%s): is the CRD installed? "
                              "`helm upgrade` does not add new CRDs; apply "
                              "crds/unsubscribestores.mailwarden.dev.yaml", exc)
                elif exc.status != 404:
                    log.warning("resync of UnsubscribeStores skipped: %s", exc)
        self._resync(SPAMPOLICIES, self.reconciler.reconcile)

    def check_canaries(self) -> None:
        """Reconcile the SpamPolicies with a canary in progress (and no others), as the
        reconciler last saw them: no request at all when there is none. (A replica taking
        over learns them at its first reconciles: kopf's resume handlers.)"""
        for namespace, name in self.reconciler.canaries():
            if self.stopping.is_set():
                return
            try:
                self.reconciler.reconcile(namespace, name, trigger="canary")
            except KubeError as exc:
                log.warning("canary check of SpamPolicy %s/%s failed: %s", namespace, name,
                            exc)

    def _resync(self, resource: Resource, reconcile: Any) -> None:
        namespaces: list[str | None] = list(self.namespaces) or [None]
        for namespace in namespaces:
            for body in self.kube.list(resource, namespace):
                if self.stopping.is_set():
                    return
                meta = body["metadata"]
                try:
                    reconcile(meta["namespace"], meta["name"], trigger="resync")
                except KubeError as exc:
                    log.warning("resync of %s %s/%s failed: %s", resource.kind,
                                meta["namespace"], meta["name"], exc)

    def stop(self) -> None:
        self.stopping.set()
