"""Start a Mailwarden server process and wait until it serves — for the tests, the fault
suite and the benchmarks.

The implementation is the one local mode ships (`mailwarden_local.processes`): one
`ServerProcess` (own session, log file, port file, gRPC health, SIGTERM then SIGKILL to the
group) for every server anything here starts. This module adds what only tests need.
"""

from __future__ import annotations

import socket
import urllib.request

from mailwarden_local.processes import ServerFailed, ServerProcess, health_status, mailwarden_argv

__all__ = ["ServerFailed", "ServerProcess", "free_port", "health_status", "mailwarden_argv",
           "scraped_total"]


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (the OS picks it), for a server that
    cannot bind port 0 and report what it got."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def scraped_total(url: str, metric: str, /, **labels: str) -> float:
    """Sum of the samples of `metric` at the Prometheus endpoint `url` whose labels
    include `labels` (0 when none match). Positional-only, so that `name` and `url` stay
    usable as label names (the operator labels its series with `name`)."""
    with urllib.request.urlopen(url, timeout=5) as rsp:
        text = rsp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(metric + "{") and not line.startswith(metric + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
