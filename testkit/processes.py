"""Start a Mailwarden server process and wait until it serves — for the tests, the fault
suite and the benchmarks.

The implementation is the one local mode ships (`mailwarden_local.processes`): one
`ServerProcess` (own session, log file, port file, gRPC health, SIGTERM then SIGKILL to the
group) for every server anything here starts. This module adds what only tests need.
"""

from __future__ import annotations

import socket

from mailwarden_local.processes import ServerFailed, ServerProcess, health_status, mailwarden_argv

__all__ = ["ServerFailed", "ServerProcess", "free_port", "health_status", "mailwarden_argv"]


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (the OS picks it), for a server that
    cannot bind port 0 and report what it got."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
