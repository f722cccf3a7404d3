"""Unsubscribe server processes for tests and benchmarks: the real `mailwarden
unsubscribe-server` command, in its own process group, on loopback ephemeral ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]


class StoreProcess:
    """One `mailwarden unsubscribe-server`. ``start()`` binds port 0 the first time and the
    same ports on a restart, so clients (and caches) reconnect to the same address."""

    def __init__(self, workdir: Path, store_args: list[str], *, env: dict | None = None,
                 extra_args: list[str] = (), name: str = "store") -> None:
        self.workdir = Path(workdir)
        self.store_args = list(store_args)
        self.extra_args = list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.grpc_port = 0
        self.http_port = 0
        self.log_path = self.workdir / f"{name}.log"
        self._channel: grpc.Channel | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, *, wait_serving: bool = True, timeout: float = 60.0) -> StoreProcess:
        ports_file = self.workdir / f"{self.name}.ports"
        ports_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "mailwarden.cli", "unsubscribe-server", *self.store_args,
                "--grpc-address", f"127.0.0.1:{self.grpc_port}",
                "--http-address", f"127.0.0.1:{self.http_port}",
                "--metrics-address", "127.0.0.1:0", "--ports-file", str(ports_file),
                "--readiness-interval", "0.5", "--drain-seconds", "0", "--grace-seconds", "2",
                *self.extra_args]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not ports_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start listening:\n{self.log()}")
            time.sleep(0.05)
        ports = json.loads(ports_file.read_text())
        self.grpc_port, self.http_port = ports["grpc"], ports["http"]
        if wait_serving:
            self.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout)
        return self

    def health(self) -> int:
        with grpc.insecure_channel(self.target) as channel:
            try:
                return health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=5).status
            except grpc.RpcError:
                return -1

    def wait_health(self, status: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.health() != status:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} health never became {status}:\n{self.log()}")
            time.sleep(0.1)

    def stub(self) -> pb_grpc.UnsubscribeStoreStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return pb_grpc.UnsubscribeStoreStub(self._channel)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.terminate(timeout=10)
