"""An asynchronous stub resolver with a shared cache, for the authentication checks.

- Queries go to the configured recursive resolvers (the pod's /etc/resolv.conf by default:
  cluster DNS) over UDP, falling back to TCP on truncation (dnspython's query functions).
- One cache per worker process, shared by every message: positive answers live for their
  TTL (capped), NXDOMAIN and NODATA for the SOA's negative TTL (RFC 2308, capped), and a
  failure (timeout, SERVFAIL, REFUSED) for a few seconds, so an outage costs each name
  one timeout, not one per message. Bounded in entries (least recently used go first).
- Concurrent lookups of the same name share one query (single flight). A caller that gives
  up at its deadline leaves the query running to its own timeout, so the answer still
  reaches the cache for the next message.
- Each lookup has a timeout (`timeout` seconds across all servers), and every caller passes
  the deadline of its message: a lookup never outlives what the call has left.
- A server that times out `BREAKER_FAILURES` times in a row is skipped for
  `BREAKER_SECONDS`; with every server skipped, lookups fail at once (temporary error)
  until a probe gets through: a DNS outage adds no latency after the first few timeouts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Protocol

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

OK = "ok"
NXDOMAIN = "nxdomain"
NODATA = "nodata"
ERROR = "error"          # temporary: timeout, SERVFAIL, REFUSED, unreachable, resolver down

MAX_TTL_SECONDS = 86400.0
MAX_NEGATIVE_TTL_SECONDS = 3600.0
DEFAULT_NEGATIVE_TTL_SECONDS = 300.0   # when the server sends no SOA with a negative answer
ERROR_TTL_SECONDS = 5.0
BREAKER_FAILURES = 5
BREAKER_SECONDS = 5.0
MAX_CNAME_HOPS = 8
MAX_RECORDS = 64         # records kept per answer (SPF caps MX and PTR at 10 anyway)
DEFAULT_CACHE_ENTRIES = 100_000

_TYPES = {"A": dns.rdatatype.A, "AAAA": dns.rdatatype.AAAA, "TXT": dns.rdatatype.TXT,
          "MX": dns.rdatatype.MX, "PTR": dns.rdatatype.PTR}


@dataclass(frozen=True)
class Answer:
    """What one lookup found. `records`: TXT → the record's strings joined (bytes); A/AAAA
    → address text; MX → (preference, host); PTR → host. Hosts are lower-case, no dot."""

    status: str
    records: tuple = ()
    detail: str = ""
    from_cache: bool = False

    @property
    def temporary(self) -> bool:
        return self.status == ERROR


class ResolverMetrics(Protocol):
    def dns_lookup(self, outcome: str, seconds: float) -> None: ...


class _NoMetrics:
    def dns_lookup(self, outcome: str, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class Nameserver:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> "Nameserver":
        """`10.0.0.10`, `10.0.0.10:5353`, `[fd00::a]:53` or `fd00::a`."""
        text = text.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = int(port_text)
        else:
            host, port = text, 53
        ipaddress.ip_address(host)  # raises ValueError: only addresses, no names
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range")
        return cls(host, port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def system_nameservers() -> list[Nameserver]:
    """The nameservers of /etc/resolv.conf (in a pod: cluster DNS)."""
    try:
        found = dns.resolver.Resolver(configure=True).nameservers
    except (dns.resolver.NoResolverConfiguration, OSError):
        return [Nameserver("127.0.0.1")]
    return [Nameserver(str(ns)) for ns in found] or [Nameserver("127.0.0.1")]


@dataclass
class _ServerState:
    failures: int = 0
    skip_until: float = 0.0


@dataclass
class _Entry:
    answer: Answer
    expires: float


@dataclass
class ResolverStats:
    queries: int = 0          # sent to a server
    cache_hits: int = 0
    shared: int = 0           # joined a query already in flight
    timeouts: int = 0
    errors: int = 0
    breaker_skips: int = 0    # answered ERROR at once: every server was skipped
    by_status: dict[str, int] = field(default_factory=dict)


class Resolver:
    """Lives on one event loop (the worker's authentication thread); not thread-safe."""

    def __init__(self, nameservers: list[Nameserver], *, timeout: float = 1.0,
                 max_entries: int = DEFAULT_CACHE_ENTRIES,
                 metrics: ResolverMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not nameservers:
            raise ValueError("at least one nameserver is needed")
        self.nameservers = list(nameservers)
        self.timeout = timeout
        self.max_entries = max_entries
        self.metrics = metrics or _NoMetrics()
        self.stats = ResolverStats()
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[Answer]] = {}
        self._servers = {ns: _ServerState() for ns in self.nameservers}

    # --- the one entry point -------------------------------------------------------------
    async def lookup(self, name: str, rdtype: str, deadline: float) -> Answer:
        """Look `name` up (absolute; a trailing dot is optional), answering by `deadline`
        (this resolver's clock) at the latest: ERROR "deadline" when it passes first."""
        key = (name.lower().rstrip("."), rdtype)
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None:
            if entry.expires > now:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                self.metrics.dns_lookup("cached", 0.0)
                return Answer(entry.answer.status, entry.answer.records, entry.answer.detail,
                              from_cache=True)
            del self._cache[key]
        remaining = deadline - now
        if remaining <= 0:
            return Answer(ERROR, detail="no time left for DNS")
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._resolve(key))
            self._inflight[key] = task
            task.add_done_callback(self._forget(key))
        else:
            self.stats.shared += 1
        try:
            # shield: the query goes on for the cache when this caller stops waiting
            return await asyncio.wait_for(asyncio.shield(task), remaining)
        except asyncio.TimeoutError:
            return Answer(ERROR, detail="the message's time for DNS ran out")

    def _forget(self, key: tuple[str, str]) -> Callable[[asyncio.Task[Answer]], None]:
        def done(_task: asyncio.Task[Answer]) -> None:
            self._inflight.pop(key, None)
        return done

    def clear(self) -> None:
        self._cache.clear()

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    # --- one query to the servers ------------------------------------------------------
    async def _resolve(self, key: tuple[str, str]) -> Answer:
        name, rdtype = key
        started = self._clock()
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            answer, ttl = Answer(NXDOMAIN, detail="not a valid domain name"), \
                DEFAULT_NEGATIVE_TTL_SECONDS
        else:
            answer, ttl = await self._ask_servers(qname, rdtype, started)
        self.stats.by_status[answer.status] = self.stats.by_status.get(answer.status, 0) + 1
        outcome = answer.status if answer.status != ERROR else (answer.detail or ERROR)
        self.metrics.dns_lookup(outcome if outcome in _OUTCOMES else "error",
                                self._clock() - started)
        if ttl > 0:
            self._store(key, answer, ttl)
        return answer

    async def _ask_servers(self, qname: dns.name.Name, rdtype: str,
                           started: float) -> tuple[Answer, float]:
        end = started + self.timeout
        now = self._clock()
        usable = [ns for ns in self.nameservers if self._servers[ns].skip_until <= now]
        if not usable:
            self.stats.breaker_skips += 1
            return Answer(ERROR, detail="resolver-down"), 0.0
        last = Answer(ERROR, detail="timeout")
        for index, server in enumerate(usable):
            left = end - self._clock()
            if left <= 0:
                break
            # The first servers get a share, so a dead first server leaves time for the rest.
            attempt = left / (len(usable) - index)
            query = dns.message.make_query(qname, _TYPES[rdtype])
            query.flags |= dns.flags.RD
            self.stats.queries += 1
            try:
                response, _tcp = await dns.asyncquery.udp_with_fallback(
                    query, server.host, timeout=attempt, port=server.port)
            except dns.exception.Timeout:
                self.stats.timeouts += 1
                self._failed(server)
                last = Answer(ERROR, detail="timeout")
                continue
            except (OSError, dns.exception.DNSException, ValueError) as exc:
                self.stats.errors += 1
                self._failed(server)
                last = Answer(ERROR, detail="unreachable" if isinstance(exc, OSError)
                              else "malformed-response")
                continue
            self._servers[server].failures = 0
            answer, ttl = _read_response(response, qname, rdtype)
            if answer.status == ERROR:  # SERVFAIL, REFUSED: another server may know
                last = answer
                continue
            return answer, ttl
        return last, ERROR_TTL_SECONDS

    def _failed(self, server: Nameserver) -> None:
        state = self._servers[server]
        state.failures += 1
        if state.failures >= BREAKER_FAILURES:
            state.skip_until = self._clock() + BREAKER_SECONDS
            state.failures = BREAKER_FAILURES - 1  # after the pause one more failure re-trips

    def _store(self, key: tuple[str, str], answer: Answer, ttl: float) -> None:
        self._cache[key] = _Entry(answer, self._clock() + ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)


_OUTCOMES = {OK, NXDOMAIN, NODATA, "timeout", "servfail", "refused", "unreachable",
             "resolver-down", "malformed-response"}


def _read_response(response: dns.message.Message, qname: dns.name.Name,
                   rdtype: str) -> tuple[Answer, float]:
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Answer(NXDOMAIN), _negative_ttl(response)
    if rcode != dns.rcode.NOERROR:
        detail = "servfail" if rcode == dns.rcode.SERVFAIL else \
            "refused" if rcode == dns.rcode.REFUSED else dns.rcode.to_text(rcode).lower()
        return Answer(ERROR, detail=detail), ERROR_TTL_SECONDS
    wanted = _TYPES[rdtype]
    name = qname
    for _hop in range(MAX_CNAME_HOPS):
        rrset = _find(response, name, wanted)
        if rrset is not None:
            records = tuple(_record(rdata, rdtype) for rdata in list(rrset)[:MAX_RECORDS])
            return Answer(OK, records), min(float(rrset.ttl), MAX_TTL_SECONDS)
        cname = _find(response, name, dns.rdatatype.CNAME)
        if cname is None:
            break
        name = list(cname)[0].target
    return Answer(NODATA), _negative_ttl(response)


def _find(response: dns.message.Message, name: dns.name.Name, rdtype: int):
    try:
        return response.find_rrset(response.answer, name, dns.rdataclass.IN,
                                   dns.rdatatype.RdataType(rdtype))
    except KeyError:
        return None


def _record(rdata, rdtype: str):
    if rdtype == "TXT":
        return b"".join(rdata.strings)
    if rdtype in ("A", "AAAA"):
        return rdata.address
    if rdtype == "MX":
        return (int(rdata.preference), rdata.exchange.to_text(omit_final_dot=True).lower())
    return rdata.target.to_text(omit_final_dot=True).lower()  # PTR


def _negative_ttl(response: dns.message.Message) -> float:
    """RFC 2308: the lesser of the SOA record's TTL and its MINIMUM field."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            soa = list(rrset)[0]
            return float(min(rrset.ttl, soa.minimum, MAX_NEGATIVE_TTL_SECONDS))
    return DEFAULT_NEGATIVE_TTL_SECONDS
