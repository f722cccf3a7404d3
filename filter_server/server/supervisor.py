"""The parent of K worker processes (`mailwarden serve --workers K`, K > 1).

Python serves one core per process, so each worker is a separate interpreter started with
`python -m filter_server.server.worker`, binding the same gRPC port with SO_REUSEPORT (the
kernel spreads connections across them) and compiling the policy itself. The supervisor
holds no gRPC state; it
  - checks the policy and TLS files first (preflight), so a mistake is one clear line
  - reserves the port and serves /metrics for all workers (prometheus-client multiprocess
    mode, in a temporary directory it removes at exit, or in $PROMETHEUS_MULTIPROC_DIR)
  - shares the policy's compiled pattern databases with the workers (a private temporary
    directory, removed at exit, or $MAILWARDEN_PATTERN_CACHE_DIR), so they load in
    milliseconds what preflight compiled
  - forwards SIGTERM/SIGINT to every worker as SIGTERM (each drains and stops gracefully)
  - with --suppression-store, builds the pod's suppression index once (a snapshot-builder
    process, restarted until it succeeds) into a file every worker maps read-only, so the
    pod holds one copy of 8-byte fingerprints however many workers it runs
  - restarts a worker that dies, and gives up (exit 4) if workers keep dying
  - exits 3 with the reason if the policy never loads, 2 on configuration errors.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from filter_server.patterns import CACHE_DIR_ENV as PATTERN_CACHE_DIR_ENV
from filter_server.server.config import (
    EXIT_CONFIG,
    EXIT_CRASHLOOP,
    EXIT_OK,
    EXIT_POLICY,
    ServeConfig,
)
from filter_server.server.logs import setup_logging
from filter_server.server.memory import resident_bytes
from filter_server.server.metrics import (
    SupervisorCollector,
    WorkerFilesCollector,
    multiprocess_registry,
    serve_metrics,
)
from filter_server.server.policy import PolicyLoadError, load_and_compile
from filter_server.server.ports import PortInUse, reserve, write_port_file
from filter_server.server.preflight import PreflightError, preflight
from mailwarden.fingerprints import FingerprintKey

INDEX_FILE_NAME = "suppressions.idx"
KEY_FILE_NAME = "fingerprint.key"
MAX_BUILDER_BACKOFF_SECONDS = 10.0

CRASH_WINDOW_SECONDS = 60.0
MAX_CRASHES_IN_WINDOW = 5
POLL_SECONDS = 0.2
# Beyond drain + grace: time for an interpreter to exit before it is killed.
EXIT_MARGIN_SECONDS = 10.0


class Fatal(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Supervisor:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.log = setup_logging(config.log_level, worker="supervisor", pid=os.getpid())
        self.workers: dict[int, subprocess.Popen] = {}
        self.restarts = 0
        self._crashes: list[float] = []
        self._pending: dict[int, float] = {}  # worker index -> when to restart it
        self._signals = 0
        self._metrics_dir: str | None = None
        self._worker_files: WorkerFilesCollector | None = None
        self._own_metrics_dir = False
        self._pattern_cache_dir: str | None = None
        self._reservation: socket.socket | None = None
        self._protocol_reservations: list[socket.socket] = []
        self._health_reservation: socket.socket | None = None
        self._index_dir: str | None = None
        self._own_index_dir = False
        self._builder: subprocess.Popen | None = None
        self._builder_args: list[str] | None = None
        self._builder_failures = 0
        self._builder_due: float | None = None  # when to (re)start the builder

    def alive_workers(self) -> int:
        """Called from the metrics thread while the supervisor loop replaces workers, so it
        iterates over a snapshot and only reads `returncode` (reaping is the loop's job)."""
        return sum(1 for p in list(self.workers.values()) if p.returncode is None)

    # --- setup --------------------------------------------------------------------------
    def _setup_metrics_dir(self) -> str:
        given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if given:
            os.makedirs(given, exist_ok=True)
            for name in os.listdir(given):  # values of a previous run would be summed in
                if name.endswith(".db"):
                    os.unlink(os.path.join(given, name))
            return given
        self._own_metrics_dir = True
        return tempfile.mkdtemp(prefix="mailwarden-metrics-")

    def _share_compiled_patterns(self) -> None:
        """Preflight compiles the policy's patterns; workers (which inherit the environment)
        read the compiled databases from this private directory instead of compiling them
        again (seconds per 1,000 rules, per worker). A directory given by the user is kept."""
        if os.environ.get(PATTERN_CACHE_DIR_ENV):
            return
        self._pattern_cache_dir = tempfile.mkdtemp(prefix="mailwarden-patterns-")
        os.environ[PATTERN_CACHE_DIR_ENV] = self._pattern_cache_dir

    def _prepare_suppression_index(self) -> tuple[Path, Path] | None:
        """With --suppression-store: the index file the workers will map (built by a
        snapshot-builder process the loop starts) and the fingerprint key file."""
        config = self.config
        if not config.suppression_store:
            return None
        if config.suppression_index_dir is not None:
            os.makedirs(config.suppression_index_dir, exist_ok=True)
            self._index_dir = str(config.suppression_index_dir)
        else:
            self._index_dir = tempfile.mkdtemp(prefix="mailwarden-suppressions-")
            self._own_index_dir = True
        index_file = Path(self._index_dir) / INDEX_FILE_NAME
        # An index of a previous run may be of another key or a rewound store: workers
        # wait for this run's.
        index_file.unlink(missing_ok=True)
        if config.suppression_key_file is not None:
            key_file = config.suppression_key_file
        else:
            key_file = Path(self._index_dir) / KEY_FILE_NAME
            key_file.unlink(missing_ok=True)
            FingerprintKey.generate().write(key_file)
        return index_file, key_file

    def _plan_builder(self, worker_config: ServeConfig) -> None:
        """The builder gets the workers' configuration: it reaches the store as they do."""
        assert worker_config.suppression_index_file is not None
        self._builder_args = [sys.executable, "-m", "filter_server.server.suppression_snapshot",
                              worker_config.to_json(), str(worker_config.suppression_index_file)]
        self._builder_due = time.monotonic()

    def _tend_builder(self, now: float) -> None:
        """Start the index builder when due; restart it (with backoff) until it succeeds."""
        builder = self._builder
        if builder is not None:
            code = builder.poll()
            if code is None:
                return
            self._builder = None
            if code == 0:
                self.log.info("suppression index built")
                self._builder_due = None
                return
            self._builder_failures += 1
            delay = min(MAX_BUILDER_BACKOFF_SECONDS, 0.5 * 2 ** (self._builder_failures - 1))
            self.log.error("suppression index builder failed; retrying", extra={
                "exit_code": code, "retry_in_seconds": delay})
            self._builder_due = now + delay
        if self._builder_due is not None and now >= self._builder_due and self._builder_args:
            self._builder = subprocess.Popen(self._builder_args, stdin=subprocess.DEVNULL)
            self._builder_due = None

    def _stop_builder(self) -> None:
        builder, self._builder = self._builder, None
        self._builder_due = None
        if builder is not None and builder.poll() is None:
            builder.terminate()
            try:
                builder.wait(EXIT_MARGIN_SECONDS)
            except subprocess.TimeoutExpired:
                builder.kill()
                builder.wait()

    def _spawn(self, index: int, worker_config: ServeConfig) -> None:
        assert self._metrics_dir is not None, "workers start after the metrics directory"
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=self._metrics_dir)
        cmd = [sys.executable, "-m", "filter_server.server.worker", worker_config.to_json(),
               str(index), str(os.getpid())]
        self.workers[index] = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        self.log.info("worker started", extra={"index": index,
                                               "worker_pid": self.workers[index].pid})

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        config = self.config
        try:
            self._share_compiled_patterns()
            try:
                preflight(config)
            except PreflightError as exc:
                raise Fatal(str(exc), exc.exit_code) from None
            try:
                self._reservation, grpc_port = reserve(config.host, config.grpc_port)
            except PortInUse as exc:
                raise Fatal(f"--grpc-port: {exc}", EXIT_CONFIG) from None
            if config.health_port is not None:
                try:
                    self._health_reservation, _ = reserve(config.host, config.health_port)
                except PortInUse as exc:
                    raise Fatal(f"--health-port: {exc}", EXIT_CONFIG) from None
            self._metrics_dir = self._setup_metrics_dir()
            registry, self._worker_files = multiprocess_registry(self._metrics_dir)
            registry.register(SupervisorCollector(self))
            try:
                metrics_port = serve_metrics(config.host, config.metrics_port, registry)
            except OSError as exc:
                raise Fatal(f"--metrics-port: cannot listen on {config.host}:"
                            f"{config.metrics_port}: {exc.strerror or exc}", EXIT_CONFIG) from None
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            protocol_ports: dict[str, int] = {}
            for name, port in config.protocol_ports().items():
                try:
                    sock, protocol_ports[name] = reserve(config.host, port)
                except PortInUse as exc:
                    raise Fatal(f"--{name}-port: {exc}", EXIT_CONFIG) from None
                self._protocol_reservations.append(sock)
            shared_index = self._prepare_suppression_index()
            worker_config = dataclasses.replace(
                config, grpc_port=grpc_port, port_file=None,
                suppression_index_file=shared_index[0] if shared_index else None,
                suppression_key_file=shared_index[1] if shared_index else None,
                memory_limit_bytes=self._worker_memory_share(),
                milter_port=protocol_ports.get("milter"),
                spamd_port=protocol_ports.get("spamd"),
                rspamd_port=protocol_ports.get("rspamd"))
            if shared_index:
                self._plan_builder(worker_config)
            for index in range(config.workers):
                if self._signals:  # stopped while starting: the loop below winds down
                    break
                self._spawn(index, worker_config)
            if config.port_file is not None:
                write_port_file(config.port_file, grpc_port, metrics_port, protocol_ports)
            self.log.info("supervising", extra={"workers": config.workers,
                                                "grpc_port": grpc_port,
                                                "metrics_port": metrics_port,
                                                "metrics_dir": self._metrics_dir})
            self._supervise(worker_config)
            return EXIT_OK
        except Fatal as exc:
            self._terminate_all()
            print(f"mailwarden serve: {exc}", file=sys.stderr)
            return exc.exit_code
        finally:
            self._cleanup()

    def _worker_memory_share(self) -> int:
        """Each worker's share of the memory limit: what this process (which keeps the
        policy it checked) does not use, split evenly; 0 when there is no limit."""
        limit = self.config.memory_limit_bytes
        if not limit:
            return 0
        return max(1, (limit - resident_bytes()) // self.config.workers)

    def _supervise(self, worker_config: ServeConfig) -> None:
        stop_deadline: float | None = None
        while True:
            now = time.monotonic()
            if self._signals and stop_deadline is None:
                self.log.info("stopping workers")
                stop_deadline = now + self.config.drain_seconds + \
                    self.config.grace_seconds + EXIT_MARGIN_SECONDS
                self._pending.clear()
                self._stop_builder()
            else:
                self._tend_builder(now)
            for index, proc in list(self.workers.items()):
                code = proc.poll()
                if code is None:
                    continue
                self._reap(proc)
                del self.workers[index]
                if stop_deadline is None:
                    self._worker_died(index, code, now)
            if stop_deadline is not None:
                if not self.workers:
                    self.log.info("all workers stopped")
                    return
                if now > stop_deadline:
                    self.log.error("workers did not stop in time; killing them")
                    self._kill_all()
                    return
            for index, when in list(self._pending.items()):
                if now >= when:
                    del self._pending[index]
                    self.restarts += 1
                    self._spawn(index, worker_config)
            time.sleep(POLL_SECONDS)

    def _worker_died(self, index: int, code: int, now: float) -> None:
        if code == EXIT_POLICY:
            try:
                load_and_compile(self.config.policy_dir)
                reason = "the policy did not load in a worker"
            except PolicyLoadError as exc:
                reason = str(exc)
            raise Fatal(f"the policy never loaded (waited "
                        f"{self.config.policy_wait_seconds:g}s): {reason}", EXIT_POLICY)
        if code == EXIT_CONFIG:
            raise Fatal("a worker could not start (its reason is in the log above)",
                        EXIT_CONFIG)
        self._crashes = [t for t in self._crashes if now - t < CRASH_WINDOW_SECONDS] + [now]
        if len(self._crashes) >= MAX_CRASHES_IN_WINDOW:
            raise Fatal(f"workers died {len(self._crashes)} times within "
                        f"{CRASH_WINDOW_SECONDS:g}s; giving up", EXIT_CRASHLOOP)
        delay = min(10.0, 0.25 * 2 ** (len(self._crashes) - 1))
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        self.log.error("worker died; restarting it", extra={
            "index": index, "how": how, "restart_in_seconds": delay})
        self._pending[index] = now + delay

    def _reap(self, proc: subprocess.Popen) -> None:
        if self._worker_files is not None:
            self._worker_files.mark_process_dead(proc.pid)

    def _terminate_all(self, timeout: float = EXIT_MARGIN_SECONDS) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.workers.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _kill_all(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def _cleanup(self) -> None:
        self._stop_builder()
        if self._own_index_dir and self._index_dir:
            shutil.rmtree(self._index_dir, ignore_errors=True)
        if self._reservation is not None:
            self._reservation.close()
        for sock in self._protocol_reservations:
            sock.close()
        if self._health_reservation is not None:
            self._health_reservation.close()
        if self._own_metrics_dir and self._metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        if self._pattern_cache_dir:
            os.environ.pop(PATTERN_CACHE_DIR_ENV, None)
            shutil.rmtree(self._pattern_cache_dir, ignore_errors=True)


def run_supervisor(config: ServeConfig) -> int:
    return Supervisor(config).run()


__all__ = ["Supervisor", "run_supervisor"]
