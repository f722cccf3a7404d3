"""A TCP relay on loopback that can go silent: the network dropping a flow without closing
it (a peer that lost power, a firewall's DROP, a NAT that forgot the mapping).

    with Relay("127.0.0.1:50061") as relay:      # clients connect to relay.target
        ...
        relay.blackhole()   # from now on nothing passes either way; no FIN, no RST

A blackholed relay keeps every connection open and reads nothing more from either side, so
each end sees a peer that has simply stopped answering — what keepalive is for.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._silent = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="relay", daemon=True)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Relay:
        self._thread.start()
        return self

    def blackhole(self) -> None:
        """Stop passing bytes, both ways, on every connection (new ones included)."""
        self._silent.set()

    def close(self) -> None:
        self._closed.set()
        self._silent.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(5)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.1)
        while not self._silent.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            if self._silent.is_set():  # read just as it went silent: drop it
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        if not self._silent.is_set():  # a real close passes through (silence does not)
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
