"""Cluster providers of the e2e suite: `process` (the default; Kubernetes' own control plane
and process node agents on this machine) and `kind` (Docker). Chosen with
`--e2e-provider=NAME` or MAILWARDEN_E2E_PROVIDER; docs/e2e.md describes both."""

from __future__ import annotations

import os

from e2e.providers.base import Cluster, Provider, ProviderError

ENV = "MAILWARDEN_E2E_PROVIDER"
DEFAULT = "process"
NAMES = ("process", "kind")


def make(name: str | None = None) -> Provider:
    name = name or os.environ.get(ENV) or DEFAULT
    if name == "process":
        from e2e.providers.process import ProcessProvider
        return ProcessProvider()
    if name == "kind":
        from e2e.providers.kind import KindProvider
        return KindProvider()
    raise ProviderError(f"unknown e2e provider {name!r} (choose one of {', '.join(NAMES)})")


__all__ = ["Cluster", "DEFAULT", "ENV", "NAMES", "Provider", "ProviderError", "make"]
