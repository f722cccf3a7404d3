"""Starting a Mailwarden server process and waiting until it serves — written once, used by
local mode and (through testkit/) by the tests, the fault suite and the benchmarks.

A `ServerProcess` runs in its own session (its own process group, so its workers go with
it) with its output appended to a log file. The servers bind port 0 when asked and report
the ports they got in a port file once listening (`--port-file` / `--ports-file`), so
waiting for that file is waiting for "listening"; "serving" is the gRPC health check
answering SERVING. A failure says which process, how it ended, and the tail of its log.

Local mode's two kinds of process, on 127.0.0.1 with ephemeral ports: `Replica` (a filter
server) and `Store` (the unsubscribe store on embedded SQLite).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mailwarden import wire

STOP_TIMEOUT_SECONDS = 15.0
HEALTH_TIMEOUT_SECONDS = 2.0


class ServerFailed(RuntimeError):
    """A server process exited (`returncode` set) or did not get somewhere in time
    (`returncode` None); the message names it and shows the tail of its log."""

    def __init__(self, message: str, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


def health_status(address: str, service: str = "",
                  timeout: float = HEALTH_TIMEOUT_SECONDS) -> str:
    """One grpc.health.v1 check on a fresh connection, as the kubelet's gRPC probe makes it:
    SERVING / NOT_SERVING / SERVICE_UNKNOWN, or the status code name of a failed call."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # its stubs lack the methods
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class ServerProcess:
    """One server process: `start()`, `wait_ports()` (listening), `wait_healthy()` (gRPC
    health SERVING), then `stop()` (SIGTERM, then SIGKILL to its group) or `kill()`."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path,
                 port_file: Path | None = None, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, die_with_parent: bool = False,
                 popen_kwargs: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.port_file = port_file
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.popen_kwargs = dict(popen_kwargs or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, Any] = {}

    # --- starting ---------------------------------------------------------------------
    def start(self) -> ServerProcess:
        if self.port_file is not None:
            self.port_file.unlink(missing_ok=True)  # a restart must not read the old one
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                cwd=self.cwd, start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                **self.popen_kwargs)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Raise ServerFailed if the process has exited."""
        if self.process is None:
            raise ServerFailed(f"{self.name} was never started")
        code = self.process.poll()
        if code is not None:
            raise ServerFailed(f"{self.name} exited with code {code}:\n{self.log_tail()}",
                               returncode=code)

    # --- waiting ----------------------------------------------------------------------
    def wait_until(self, check: Callable[[], object], *, what: str, timeout: float,
                   interval: float = 0.05) -> float:
        """Poll `check` until it is true (an OSError counts as not yet); fail at once when
        the process exits. Returns the seconds it took."""
        started = time.monotonic()
        while True:
            self.check_alive()
            try:
                if check():
                    return time.monotonic() - started
            except OSError:
                pass
            if time.monotonic() - started > timeout:
                raise ServerFailed(f"{self.name}: {what} not reached within {timeout:g}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(interval)

    def wait_ports(self, timeout: float) -> dict[str, Any]:
        """Wait until the server has written its port file (it is listening); returns and
        keeps (`self.ports`) what the file says."""
        port_file = self.port_file
        if port_file is None:
            raise ValueError(f"{self.name} has no port file to wait for")
        self.wait_until(port_file.is_file, what="listening (its port file)", timeout=timeout,
                        interval=0.02)
        self.ports = json.loads(port_file.read_text())
        return self.ports

    def wait_healthy(self, address: str, *, service: str = "", timeout: float) -> None:
        """Wait until the gRPC health check of `service` at `address` answers SERVING."""
        self.wait_until(lambda: health_status(address, service) == "SERVING",
                        what=f"SERVING ({service or 'the whole server'})", timeout=timeout,
                        interval=0.1)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "  (no log)"
        return "\n".join("  " + line for line in text[-lines:]) or "  (empty log)"

    # --- ending -----------------------------------------------------------------------
    def signal(self, signum: int) -> None:
        """Send `signum` to the process itself (as the kubelet signals a container)."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM if signum is None else signum)

    def stop(self, grace: float = STOP_TIMEOUT_SECONDS, *,
             signum: int | None = None) -> int | None:
        """`signum` (default SIGTERM: a graceful stop), then SIGKILL to the whole group
        after `grace` seconds; the exit code. SIGKILL goes to the whole group at once, as a
        crash would."""
        if self.process is None:
            return None
        if signum == signal.SIGKILL:
            self.kill()
        elif self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if signum is None else signum)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the process group (the process and any workers it started) and reap."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # gone already (a leftover group member, if any, has no leader to reap)
        if self.process.poll() is None:
            self.process.wait(30)


def mailwarden_argv(*args: str) -> list[str]:
    """The argv of `mailwarden ARGS` with this interpreter (no console script needed)."""
    return [sys.executable, "-m", "mailwarden.cli", *args]


class Replica(ServerProcess):
    """A filter replica: `mailwarden serve` on 127.0.0.1, one worker, ephemeral ports."""

    def __init__(self, name: str, workdir: Path, *, policy_dir: Path,
                 suppression_store: str | None = None) -> None:
        port_file = workdir / f"{name}.ports"
        store = ["--suppression-store", suppression_store] if suppression_store else []
        super().__init__(name, mailwarden_argv(
            "serve", "--policy-dir", str(policy_dir), "--host", "127.0.0.1",
            "--grpc-port", "0", "--metrics-port", "0", "--workers", "1",
            "--drain-seconds", "0", "--grace-seconds", "5", "--log-level", "warning",
            "--port-file", str(port_file), *store),
            log_path=workdir / f"{name}.log", port_file=port_file, die_with_parent=True)

    @property
    def grpc_port(self) -> int:
        return int(self.ports["grpc_port"])

    @property
    def metrics_port(self) -> int:
        return int(self.ports["metrics_port"])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_serving(self, timeout: float) -> None:
        self.wait_healthy(self.address, service=wire.FILTER_SERVICE, timeout=timeout)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()


class Store(ServerProcess):
    """The unsubscribe store on embedded SQLite (not highly available: local mode only)."""

    def __init__(self, name: str, workdir: Path, *, key_dir: Path) -> None:
        port_file = workdir / f"{name}.ports"
        super().__init__(name, mailwarden_argv(
            "unsubscribe-server", "--store", "sqlite",
            "--sqlite-path", str(workdir / "unsubscribes.db"),
            "--signing-key-dir", str(key_dir), "--grpc-address", "127.0.0.1:0",
            "--http-address", "127.0.0.1:0", "--metrics-address", "",
            "--drain-seconds", "0", "--log-level", "warning", "--ports-file", str(port_file)),
            log_path=workdir / f"{name}.log", port_file=port_file, die_with_parent=True)
        self.key_dir = key_dir

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def wait_serving(self, timeout: float) -> None:
        self.wait_healthy(self.address, timeout=timeout)
