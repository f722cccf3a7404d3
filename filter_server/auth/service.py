"""The worker's authentication service: one event loop thread running the resolver, and a
thread-safe `gather` that gRPC handler threads call (they wait on it; the classification
turn is not held meanwhile, so slow DNS delays only the messages that need it).

One resolver (and cache) per worker, rebuilt only when the policy changes its servers,
timeout or cache size."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Protocol

from filter_server.auth.dmarc import organizational_domain
from filter_server.auth.evaluate import AuthSettings
from filter_server.auth.gather import Evidence, Request, TokenVerifier, check_token, gather
from filter_server.auth.headers import from_domains, header_fields
from filter_server.auth.resolver import ERROR, Answer, Nameserver, Resolver, system_nameservers
from filter_server.auth.spf import SpfResult

# Past its own deadline, a gather gets this long to hand over what it has before the
# caller stops waiting (the loop thread may be busy with other messages' work).
HANDOVER_SLACK_SECONDS = 0.25


class AuthMetrics(Protocol):
    def dns_lookup(self, outcome: str, seconds: float) -> None: ...

    def gathered(self, seconds: float, temperrors: list[str]) -> None: ...


class Authenticator:
    def __init__(self, metrics: AuthMetrics, *, verify_token: TokenVerifier | None = None,
                 system_servers: list[Nameserver] | None = None) -> None:
        self.metrics = metrics
        self.verify_token = verify_token
        self._system = system_servers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="auth-dns", daemon=True)
        self._thread.start()
        self._resolver: Resolver | None = None
        self._resolver_key: tuple | None = None
        self._lock = threading.Lock()
        # The Public Suffix List takes ~0.3 s to load: not on the first message's time.
        organizational_domain("example.com")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def close(self) -> None:
        """Cancel lookups still running (for the cache only) and stop the thread."""
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - closing must not fail
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    def resolver_for(self, settings: AuthSettings) -> Resolver:
        key = (settings.servers, settings.timeout_seconds, settings.cache_entries)
        with self._lock:
            if self._resolver is None or key != self._resolver_key:
                servers = [Nameserver.parse(s) for s in settings.servers] or \
                    (self._system if self._system is not None else system_nameservers())
                self._resolver = Resolver(servers, timeout=settings.timeout_seconds,
                                          max_entries=settings.cache_entries,
                                          metrics=self.metrics)
                self._resolver_key = key
            return self._resolver

    def gather(self, request: Request, settings: AuthSettings,
               deadline_left: float | None) -> Evidence:
        """What DNS says about this message, within the policy's budget and at most half
        of what is left of the call's deadline. Never raises; what is missing at the end
        is a temporary error."""
        budget = settings.budget_seconds
        if deadline_left is not None:
            budget = min(budget, max(0.0, deadline_left) * 0.5)
        resolver = self.resolver_for(settings)
        deadline = time.monotonic() + budget
        future = asyncio.run_coroutine_threadsafe(
            gather(request, resolver, deadline=deadline, verify_token=self.verify_token),
            self._loop)
        try:
            evidence = future.result(timeout=budget + HANDOVER_SLACK_SECONDS)
        except (concurrent.futures.TimeoutError, Exception):
            future.cancel()
            evidence = self._nothing_in_time(request)
        self.metrics.gathered(evidence.seconds, _temporary(evidence))
        return evidence

    def _nothing_in_time(self, request: Request) -> Evidence:
        fields = header_fields(request.raw)
        evidence = Evidence(fields, bulk=request.bulk, recipients=request.recipients,
                            list_scope=request.list_scope)
        evidence.from_domains, evidence.from_count = from_domains(fields)
        if request.client_ip:
            evidence.spf = SpfResult("temperror", "", "no time for DNS")
        missing = Answer(ERROR, detail="no time for DNS")
        from filter_server.auth.dkim import key_requests
        from filter_server.auth.dmarc import record_names
        evidence.keys = {k.name: missing for k in key_requests(fields)}
        if len(evidence.from_domains) == 1:
            evidence.dmarc = {n: missing for n in record_names(evidence.from_domains[0])}
        if request.bulk:
            evidence.token = check_token(fields, self.verify_token)
        return evidence


def _temporary(evidence: Evidence) -> list[str]:
    out = []
    if evidence.spf is not None and evidence.spf.result == "temperror":
        out.append("spf")
    if any(a.status == ERROR for a in evidence.keys.values()):
        out.append("dkim")
    if any(a.status == ERROR for a in evidence.dmarc.values()):
        out.append("dmarc")
    return out
