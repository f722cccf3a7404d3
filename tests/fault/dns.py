"""The headless Service's DNS on loopback: a real DNS server (dnslib, UDP and TCP on
127.0.0.1, ephemeral port) answering the Service name with the addresses of the pods that
are ready and not terminating — what cluster DNS serves for a headless Service with
`publishNotReadyAddresses: false`.

The client reaches it exactly as in a cluster, through gRPC's own DNS resolver
(`dns://127.0.0.1:PORT/<service>.<ns>.svc.cluster.local:<grpc port>`; the authority names
the DNS server, the only difference from `dns:///...` in a pod). Answers carry TTL 0:
gRPC does not cache by TTL anyway, it re-resolves when a connection is lost or closed
(GOAWAY at the server's maximum connection age) and at most as often as its minimum
re-resolution interval allows.
"""

from __future__ import annotations

import threading
from typing import Callable

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class _Resolver(BaseResolver):
    def __init__(self, name: str, addresses: Callable[[], list[str]],
                 on_query: Callable[[], None]) -> None:
        self.name = name.rstrip(".").lower()
        self.addresses = addresses
        self.on_query = on_query

    def resolve(self, request, handler):  # noqa: ANN001 (dnslib's interface)
        reply = request.reply()
        qname = str(request.q.qname).rstrip(".").lower()
        if qname != self.name:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if QTYPE[request.q.qtype] == "A":
            self.on_query()
            for ip in self.addresses():
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=0))
        return reply  # AAAA and others: no records (NOERROR, empty)


class ServiceDNS:
    """Serves `name` → `addresses()` (called per query, so it is always current)."""

    def __init__(self, name: str, addresses: Callable[[], list[str]]) -> None:
        self.name = name
        self.queries = 0
        self._lock = threading.Lock()
        resolver = _Resolver(name, addresses, self._count)
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data",
                          prefix=False)
        # gRPC's resolver retries over TCP when an answer is truncated, so serve both on
        # one port: take a free UDP port, then the same TCP port (another if it is taken).
        for _ in range(20):
            self._udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=quiet)
            self.port = self._udp.server.server_address[1]
            try:
                self._tcp = DNSServer(resolver, address="127.0.0.1", port=self.port, tcp=True,
                                      logger=quiet)
                break
            except OSError:
                self._udp.server.server_close()
        else:
            raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")

    def _count(self) -> None:
        with self._lock:
            self.queries += 1

    def target(self, grpc_port: int) -> str:
        return f"dns://127.0.0.1:{self.port}/{self.name}:{grpc_port}"

    def start(self) -> "ServiceDNS":
        self._udp.start_thread()
        self._tcp.start_thread()
        return self

    def stop(self) -> None:
        for server in (self._udp, self._tcp):
            try:
                server.stop()
                server.server.server_close()
            except Exception:  # already stopped
                pass
