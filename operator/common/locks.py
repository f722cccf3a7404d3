"""One lock per custom resource, so that one object is reconciled by one thread at a time."""

from __future__ import annotations

import threading


class ObjectLocks:
    """kopf serializes handlers per object, but Deployment events, timers and other objects'
    handlers reach the same resource from other tasks: they take its lock first."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def of(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._locks.pop((namespace, name), None)
