"""Binding checks, the shared-port reservation for worker processes, and the port file.

gRPC binds with SO_REUSEPORT when asked, which would let two unrelated servers share a port
without a word. So before any worker binds, the port is probed *without* SO_REUSEPORT (a
clear 'port in use' error), and for several workers the supervisor then holds a bound,
non-listening SO_REUSEPORT socket on it: that fixes the port number when --grpc-port is 0
and keeps other programs off it, while the kernel hands connections only to the workers'
listening sockets.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

from filter_server.server.metrics import bare_host


class PortInUse(Exception):
    pass


def _family_and_address(host: str) -> tuple[socket.AddressFamily, str]:
    host = bare_host(host)
    if ":" in host:
        return socket.AF_INET6, host
    if host in ("", "0.0.0.0", "*"):
        return socket.AF_INET, "0.0.0.0"
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return infos[0][0], str(infos[0][4][0])


def _bind(host: str, port: int, reuseport: bool) -> socket.socket:
    family, address = _family_and_address(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Connections this port's previous server closed linger in TIME_WAIT for a minute
        # and would refuse a restarted server; SO_REUSEADDR still refuses a port that is
        # being listened on (Linux), which is what the probe is for.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and address == "::":
            # gRPC's [::] listens dual-stack; so must the probe and the reservation.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is already in use") from None
        if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL) and address == "::":
            return _bind("0.0.0.0", port, reuseport)  # host without IPv6
        raise
    return sock


def check_free(host: str, port: int) -> None:
    """Raise PortInUse if something (including an SO_REUSEPORT listener) holds `port`."""
    if port:
        _bind(host, port, reuseport=False).close()


def reserve(host: str, port: int) -> tuple[socket.socket, int]:
    """Hold `port` (0 = pick one) for SO_REUSEPORT workers; returns (socket, port)."""
    check_free(host, port)
    sock = _bind(host, port, reuseport=True)
    return sock, sock.getsockname()[1]


def listening_socket(host: str, port: int, reuseport: bool) -> socket.socket:
    """A listening TCP socket on `port` (0 = pick one), dual-stack for `[::]`, for the
    mail-server protocol ports: checked free first, like the gRPC port, unless workers
    share it (`reuseport`: the supervisor already probed and reserved it)."""
    if not reuseport:
        check_free(host, port)
    sock = _bind(host, port, reuseport=reuseport)
    sock.listen(512)
    sock.setblocking(False)
    return sock


def write_port_file(path: Path, grpc_port: int, metrics_port: int,
                    protocol_ports: dict[str, int] | None = None) -> None:
    """Tell whoever started us which ports we bound (atomically: write, then rename);
    the mail-server protocol ports as `<protocol>_port`."""
    tmp = path.with_name(path.name + ".tmp")
    doc = {"grpc_port": grpc_port, "metrics_port": metrics_port, "pid": os.getpid()}
    doc.update({f"{name}_port": port for name, port in (protocol_ports or {}).items()})
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)
