"""Health checks over HTTPS: each returns None when healthy, else a short reason."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit


def tls_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Verifies the server against `ca` (hostname included); presents `cert` if given."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def get(url: str, ctx: ssl.SSLContext, timeout: float = 5) -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, context=ctx,
                                       timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def endpoint_ok(url: str, ctx: ssl.SSLContext) -> Callable[[], str | None]:
    """A Kubernetes-style /healthz, /livez or /readyz: 200 with body "ok"."""
    def check() -> str | None:
        try:
            status, body = get(url, ctx)
        except (OSError, http.client.HTTPException) as err:
            return f"GET {url}: {err}"
        if status == 200:
            return None
        # The failing checks are the lines starting with "[-]" (with ?verbose they are listed).
        failing = [line for line in body.splitlines() if line.startswith("[-]")]
        return f"GET {url}: HTTP {status} {'; '.join(failing) or body.strip()[:300]}"
    return check


def etcd_ok(url: str, ctx: ssl.SSLContext) -> Callable[[], str | None]:
    """etcd's /health: {"health":"true"}."""
    def check() -> str | None:
        try:
            status, body = get(url, ctx)
        except (OSError, http.client.HTTPException) as err:
            return f"GET {url}: {err}"
        try:
            healthy = status == 200 and json.loads(body).get("health") == "true"
        except ValueError:
            healthy = False
        return None if healthy else f"GET {url}: HTTP {status} {body.strip()[:300]}"
    return check
