"""What an idle connection costs a filter worker: asyncio (what the protocol listeners
use) against a thread per connection, measured, not assumed.

An MTA holds a milter connection for a whole SMTP session, mostly idle between commands,
and a stalled or hostile peer holds one for --protocol-idle-seconds. This opens N idle
connections to (a) a real `mailwarden serve --milter-port` and (b) a thread-per-connection
server in Python (socketserver.ThreadingTCPServer, each handler blocked in recv: what the
listener would be with threads), and reports each process's resident memory and thread
count before and after.

    .venv/bin/python -m benchmarks.idle_connections [--connections 1000]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADED_SERVER = r"""
import socketserver, sys
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        while self.request.recv(65536):
            pass
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 1024
server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def measure(pid: int, port: int, n: int, hello: bytes) -> dict:
    time.sleep(1)
    before = rss_mib(pid), threads(pid)
    socks = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if hello:
            sock.sendall(hello)
        socks.append(sock)
    time.sleep(2)
    after = rss_mib(pid), threads(pid)
    for sock in socks:
        sock.close()
    return {"connections": n, "rss_before_mib": round(before[0], 1),
            "rss_after_mib": round(after[0], 1),
            "kib_per_connection": round((after[0] - before[0]) * 1024 / n, 1),
            "threads_before": before[1], "threads_after": after[1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        from testkit.filter import mini_policy, write_policy

        write_policy(Path(tmp) / "policy", mini_policy(1))
        port_file = Path(tmp) / "ports.json"
        serve = subprocess.Popen(
            [sys.executable, "-m", "mailwarden.cli", "serve", "--policy-dir",
             str(Path(tmp) / "policy"), "--host", "127.0.0.1", "--grpc-port", "0",
             "--metrics-port", "0", "--workers", "1", "--milter-port", "0",
             "--protocol-max-connections", str(args.connections + 10), "--port-file",
             str(port_file)], stderr=subprocess.DEVNULL)
        try:
            while not port_file.exists():
                time.sleep(0.1)
            ports = json.loads(port_file.read_text())
            # a negotiated milter session, then silence (an MTA between SMTP commands)
            hello = b"\0\0\0\x0dO" + (6).to_bytes(4, "big") + (0x1FF).to_bytes(4, "big") \
                + (0).to_bytes(4, "big")
            out["asyncio (mailwarden serve, milter)"] = measure(
                serve.pid, ports["milter_port"], args.connections, hello)
        finally:
            serve.terminate()
            serve.wait(30)
        threaded = subprocess.Popen([sys.executable, "-c", THREADED_SERVER],
                                    stdout=subprocess.PIPE, text=True)
        try:
            port = int(threaded.stdout.readline())  # type: ignore[union-attr]
            out["thread per connection (socketserver)"] = measure(
                threaded.pid, port, args.connections, b"")
        finally:
            threaded.kill()
            threaded.wait()
    for name, row in out.items():
        print(f"{name}: {row['connections']} idle connections: RSS {row['rss_before_mib']} -> "
              f"{row['rss_after_mib']} MiB ({row['kib_per_connection']} KiB each), threads "
              f"{row['threads_before']} -> {row['threads_after']}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
