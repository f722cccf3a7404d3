"""One serving process: the gRPC server with Filter, health and reflection, the policy
holder and its reload thread, and the shutdown sequence.

Lifecycle:
  1. load and compile the policy
  2. bind and start the gRPC server. If the policy did not load and --policy-wait-seconds
     allows waiting, health says NOT_SERVING (Filter calls get UNAVAILABLE) until a valid
     policy appears; otherwise the worker exits with code 3.
  3. health SERVING; poll the policy directory for changes
  4. on SIGTERM/SIGINT: health NOT_SERVING at once (load balancers and client-side health
     checks stop sending), keep serving for --drain-seconds while they catch up, then
     stop accepting calls and give in-flight calls up to --grace-seconds to finish.
     A second signal skips the rest of the drain.

`mailwarden serve --workers 1` runs this in the command's own process; with more workers
the supervisor starts each as `python -m filter_server.server.worker` (a fresh interpreter:
no gRPC state ever crosses a fork).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from filter_server.engine.compiled import CompiledPolicy
from filter_server.server.authentication import make_authenticator
from filter_server.server.config import (
    ENVELOPE_ALLOWANCE_BYTES,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_POLICY,
    ServeConfig,
)
from filter_server.server.health import NOT_SERVING, SERVING, HealthServicer
from filter_server.server.health import SERVICE_NAME as HEALTH_SERVICE_NAME
from filter_server.server.logs import LOGGER_NAME, setup_logging
from filter_server.server.memory import MemoryBudget, budget_for, resident_bytes
from filter_server.server.metrics import FilterMetrics, serve_metrics
from filter_server.server.policy import PolicyHolder
from filter_server.server.ports import PortInUse, check_free, write_port_file
from filter_server.server.shadow import ShadowEvaluator, ShadowMetrics

if TYPE_CHECKING:
    from filter_server.protocols.server import ProtocolServers
from filter_server.server.learning import SERVICE_NAME as LEARNING_SERVICE_NAME
from filter_server.server.learning import (
    LearningServicer,
    LearnSettings,
    add_learning_service,
    read_admin_token,
)
from filter_server.server.preflight import PreflightError, preflight
from filter_server.server.servicer import SERVICE_NAME, FilterServicer, add_filter_service
from filter_server.server.store_suppression import StoreSuppression
from filter_server.server.suppression import NoSuppressionStore, SuppressionProvider
from filter_server.server.suppression_setup import follow_store
from filter_server.server.tls import TlsConfigError, server_credentials
from mailwarden.fingerprints import KeyUnusable
from mailwarden.keepalive import SERVER_PING_OPTIONS


# Calls (and threads) gRPC takes beyond --max-concurrent-rpcs: health checks and reflection
# still get a thread when the Filter service is at capacity, and calls over its capacity
# reach our admission control, which answers and counts them (capacity_rejections_total).
# gRPC's own limit counts a call until its status is sent, after it gave back its slot here;
# with 16 extra, under CPU contention, gRPC refused 25-40% of the calls over capacity itself
# ("Concurrent RPC limit exceeded!"), uncounted (tests/filter_server/server/test_overload.py).
def headroom_rpcs(max_concurrent_rpcs: int) -> int:
    return max(16, max_concurrent_rpcs)


SWITCH_INTERVAL_SECONDS = 0.001
# glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def server_options(config: ServeConfig) -> list[tuple[str, int]]:
    return [
        # Workers share the port only when there are several; otherwise a second server
        # on the same port must fail to bind, not silently take half the traffic.
        ("grpc.so_reuseport", 1 if config.workers > 1 else 0),
        ("grpc.max_receive_message_length",
         config.max_message_bytes + ENVELOPE_ALLOWANCE_BYTES),
        # Connections are closed (GOAWAY) after this age, so clients re-resolve and
        # spread onto pods that started since they connected.
        ("grpc.max_connection_age_ms", config.max_connection_age_ms),
        ("grpc.max_connection_age_grace_ms", config.max_connection_age_grace_ms),
        # Find dead clients' connections; take client keepalive pings up to one per
        # 500 ms without data. The balancing client pings a connection that has calls in
        # flight and read nothing for 250 ms: that turns a silently vanished pod into < 1 s
        # of slow calls instead of 10 s of failed ones (mailwarden/client.py,
        # docs/fault.md). The same options as the store's (mailwarden/keepalive.py).
        *SERVER_PING_OPTIONS,
        # Without bandwidth-delay probing a call's flow-control window stays at 64 KiB, so
        # gRPC buffers no more than that of a message the service has not asked to receive
        # yet (with probing: about 8 MiB per waiting call). Admission reserves memory before
        # it receives (servicer.add_filter_service); in-cluster links do not need larger
        # windows.
        ("grpc.http2.bdp_probe", 0),
    ]


class Worker:
    def __init__(self, config: ServeConfig, *, index: int = 0, supervised: bool = False,
                 suppression: SuppressionProvider | None = None,
                 preloaded: CompiledPolicy | None = None) -> None:
        self.config = config
        self.preloaded = preloaded
        self.supervised = supervised
        self.log = setup_logging(config.log_level, worker=index, pid=os.getpid())
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self.metrics = FilterMetrics()
        self.holder = PolicyHolder(config.policy_dir, self.metrics, self.log)
        self.health = HealthServicer()
        self.store_suppression: StoreSuppression | None = None
        if suppression is None and config.suppression_store:
            # Under the supervisor: the pod's key and the index file it builds for all
            # workers. Alone: a key of this process and a snapshot of its own.
            try:
                cache = follow_store(config, index_path=config.suppression_index_file)
            except KeyUnusable as exc:
                raise StartupError(f"--suppression-key-file: {exc}") from None
            self.store_suppression = StoreSuppression(cache, self.metrics,
                                                      on_held=self._suppressions_held)
            suppression = self.store_suppression
        self.authenticator = make_authenticator(self.metrics, config.signing_key_dir,
                                                self.log)
        self.shadow: ShadowEvaluator | None = None
        if config.shadow_policy_dir is not None:
            self.shadow = ShadowEvaluator(
                config.shadow_policy_dir, ShadowMetrics(), self.log,
                sample_rate=config.shadow_sample_rate,
                cpu_fraction=config.shadow_cpu_fraction)
        self.servicer = FilterServicer(
            self.holder, self.metrics, self.log, authenticator=self.authenticator,
            suppression=suppression or NoSuppressionStore(),
            max_message_bytes=config.max_message_bytes,
            max_concurrent_rpcs=config.max_concurrent_rpcs,
            cpu_budget_seconds=config.cpu_budget_seconds,
            max_recipients=config.max_recipients,
            receive_timeout_seconds=config.receive_timeout_seconds,
            max_streams_per_connection=config.max_streams_per_connection,
            memory=MemoryBudget(budget_for(config.memory_limit_bytes or None,
                                           resident_bytes())),
            shadow=self.shadow)
        self.learning = LearningServicer(self.holder, LearnSettings(
            directory=config.learn_dir, admin_token=read_admin_token(config.admin_token_file),
            max_per_hour=config.learn_max_per_hour, max_messages=config.learn_max_messages,
            max_message_bytes=config.max_message_bytes,
            cpu_budget_seconds=config.cpu_budget_seconds), self.log)
        self.server: grpc.Server | None = None
        self.health_server: grpc.Server | None = None
        self.grpc_port = 0
        self.protocols: "ProtocolServers | None" = None
        self.protocol_ports: dict[str, int] = {}

    # --- signals ------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        # Under a supervisor, Ctrl-C reaches the supervisor too, which forwards one
        # SIGTERM; taking the terminal's SIGINT as well would count as a second signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.supervised else self._on_signal)

    # --- startup ------------------------------------------------------------------------
    def start_grpc(self) -> None:
        config = self.config
        grpc_limit = config.max_concurrent_rpcs + headroom_rpcs(config.max_concurrent_rpcs)
        pool = futures.ThreadPoolExecutor(max_workers=grpc_limit, thread_name_prefix="rpc")
        server = grpc.server(pool, options=server_options(config),
                             maximum_concurrent_rpcs=grpc_limit)
        add_filter_service(self.servicer, server)
        add_learning_service(self.learning, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        for service in ("", SERVICE_NAME):
            self.health.set(service, NOT_SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, LEARNING_SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME),
            server)
        if not self.supervised:  # the supervisor already probed and reserved the port
            try:
                check_free(config.host, config.grpc_port)
            except PortInUse as exc:
                raise StartupError(f"--grpc-port: {exc}") from None
        address = f"{config.host}:{config.grpc_port}"
        try:
            if config.tls_dir is not None:
                credentials = server_credentials(config.tls_dir, config.require_client_cert,
                                                 self.log)
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except TlsConfigError as exc:
            raise StartupError(f"--tls-dir: {exc}") from None
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {address}: {exc}") from None
        server.start()
        self.server, self.grpc_port = server, port
        if config.health_port is not None:
            self.start_health()

    def start_health(self) -> None:
        """grpc.health.v1 alone, in plaintext, on --health-port: the same health states as
        the gRPC port (one servicer), for probes that cannot speak TLS. Nothing else is
        served there, so TLS and client certificates still guard Classify."""
        config = self.config
        assert config.health_port is not None
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4,
                                                        thread_name_prefix="health"),
                             options=[("grpc.so_reuseport", 1 if config.workers > 1 else 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if not self.supervised:
            try:
                check_free(config.host, config.health_port)
            except PortInUse as exc:
                raise StartupError(f"--health-port: {exc}") from None
        address = f"{config.host}:{config.health_port}"
        try:
            server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {address}: {exc}") from None
        server.start()
        self.health_server = server

    def start_protocols(self) -> None:
        """milter, spamd and Rspamd listeners (filter_server/protocols), when asked for."""
        config = self.config
        if not config.protocol_ports():
            return
        from filter_server.protocols.server import Limits, ProtocolServers

        self.protocols = ProtocolServers(
            host=config.host, ports=config.protocol_ports(), reuse_port=self.supervised,
            servicer=self.servicer, holder=self.holder, log=self.log,
            limits=Limits(idle_seconds=config.protocol_idle_seconds,
                          deadline_seconds=config.protocol_deadline_seconds,
                          max_connections=config.protocol_max_connections,
                          max_message_bytes=config.max_message_bytes),
            threads=config.max_concurrent_rpcs)
        try:
            self.protocol_ports = self.protocols.start()
        except PortInUse as exc:
            raise StartupError(f"protocol port: {exc}") from None
        except OSError as exc:
            raise StartupError(f"cannot listen on a protocol port: "
                               f"{exc.strerror or exc}") from None

    def start_metrics(self) -> int:
        try:
            return serve_metrics(self.config.host, self.config.metrics_port)
        except OSError as exc:
            raise StartupError(f"--metrics-port: cannot listen on "
                               f"{self.config.host}:{self.config.metrics_port}: "
                               f"{exc.strerror or exc}") from None

    # --- the whole life -------------------------------------------------------------------
    def run(self) -> int:
        config = self.config
        self.install_signal_handlers()
        # gRPC's polling thread, which takes calls in (and rejects them when over
        # capacity), waits for the interpreter lock after every event; with a thread
        # classifying it would wait up to the default 5 ms switch interval each time, and
        # under a surge calls then queue unseen in the gRPC core until their deadlines
        # pass. 1 ms keeps it responsive at a negligible cost.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        # Compile before listening when the policy is there: connections then only ever
        # reach a worker that can answer (this matters most for a restarted worker, which
        # shares the port with busy siblings). Only when the policy is missing or invalid
        # and --policy-wait-seconds allows waiting does the worker listen first, saying
        # NOT_SERVING until a valid policy shows up.
        if self.store_suppression is not None:
            # Loads its snapshot in the background: classification does not wait for the
            # store, responses say SUPPRESSION_STALE until the cache is current.
            self.store_suppression.start()
        if self.preloaded is not None:
            self.holder.install(self.preloaded)
            error = None
        else:
            error = self.holder.load_initial(0, config.policy_poll_seconds, self.stop)
        self.start_grpc()
        self.start_protocols()
        if not self.supervised:
            metrics_port = self.start_metrics()
            if config.port_file is not None:
                write_port_file(config.port_file, self.grpc_port, metrics_port,
                                self.protocol_ports)
        self.log.info("listening", extra={
            "grpc_port": self.grpc_port, "protocol_ports": self.protocol_ports,
            "tls": config.tls_dir is not None,
            "mutual_tls": config.require_client_cert, "policy_dir": str(config.policy_dir),
            "policy_hash": self.holder.current.hash if self.holder.current else None})
        if error is not None and config.policy_wait_seconds > 0:
            error = self.holder.load_initial(config.policy_wait_seconds,
                                             config.policy_poll_seconds, self.stop)
        if error is not None and not self.stop.is_set():
            self.log.error("the policy did not load", extra={
                "policy_dir": str(config.policy_dir), "errors": error.problems,
                "waited_seconds": config.policy_wait_seconds})
            if self.server is not None:
                self.server.stop(0)
            if self.protocols is not None:
                self.protocols.stop(0)
            raise StartupError(str(error), EXIT_POLICY)
        if not self.stop.is_set():
            if self.shadow is not None:
                # Loaded before SERVING, so the first sampled calls already have it.
                self.shadow.start(self.stop, config.policy_poll_seconds)
            self.size_memory_budget()
            for service in ("", SERVICE_NAME):
                self.health.set(service, SERVING)
            self.metrics.serving.set(1)
            threading.Thread(target=self.holder.poll_forever, name="policy-reload",
                             args=(config.policy_poll_seconds, self.stop), daemon=True).start()
        while not self.stop.wait(0.5):
            pass
        self.shutdown()
        return EXIT_OK

    def size_memory_budget(self) -> None:
        """The budget for messages in flight: the worker's share of the container's memory
        limit less what the worker holds once its policy is loaded, less its suppression
        cache as it grows (filter_server/server/memory.py)."""
        limit = self.config.memory_limit_bytes or None
        memory = self.servicer.memory
        # The cache may be loading already; it is counted apart, as it grows.
        resident = resident_bytes() - memory.outside
        memory.set_base(budget_for(limit, resident))
        budget = memory.capacity
        self.metrics.memory_budget.set(budget)
        mib = 1 << 20
        self.log.info("memory budget for messages in flight", extra={
            "budget_mib": budget // mib, "memory_limit_mib": limit // mib if limit else None,
            "resident_mib": resident // mib, "suppression_cache_mib": memory.outside // mib})
        receive = self.servicer.receive_reservation(None)
        if budget < receive:
            self.log.warning(
                "the memory limit is small for --max-message-bytes: a message that large "
                "is received only while no other call holds memory", extra={
                    "budget_mib": budget // mib, "needed_mib": receive // mib})

    def _suppressions_held(self, private: int, shared: int) -> None:
        """The suppression cache holds `private` bytes of its own and maps `shared` bytes
        with the pod's other workers (each counts its part): leave room for them."""
        memory = self.servicer.memory
        memory.set_outside(private + shared // max(1, self.config.workers))
        self.metrics.memory_budget.set(memory.capacity)

    def shutdown(self) -> None:
        config = self.config
        self.health.enter_graceful_shutdown()
        self.metrics.serving.set(0)
        if self.holder.current is None:  # never served: nothing to drain
            self.log.info("signal received before the policy loaded; stopping")
        else:
            self.log.info("signal received: health NOT_SERVING, draining",
                          extra={"drain_seconds": config.drain_seconds})
            if self.hurry.wait(config.drain_seconds):
                self.log.info("second signal: drain cut short")
        self.log.info("refusing new calls; waiting for calls in flight",
                      extra={"grace_seconds": config.grace_seconds})
        stopped = self.server.stop(config.grace_seconds) if self.server is not None else None
        if self.protocols is not None:  # in step with gRPC: same grace, same moment
            self.protocols.stop(config.grace_seconds)
        if stopped is not None:
            stopped.wait()
        if self.health_server is not None:
            self.health_server.stop(0)
        if self.store_suppression is not None:
            self.store_suppression.stop()
        self.authenticator.close()
        self.log.info("stopped")


def run_worker(config: ServeConfig, *, index: int = 0, supervised: bool = False) -> int:
    """Run one worker to the end; returns the process exit code. Startup problems print
    one line on stderr (not a traceback). Unsupervised, the preflight checks run first
    (the supervisor ran them already for its workers)."""
    tune_allocator()
    try:
        preloaded = None if supervised else preflight(config)
        return Worker(config, index=index, supervised=supervised, preloaded=preloaded).run()
    except (StartupError, PreflightError) as exc:
        if supervised:  # the supervisor prints the one line for the user; log it for ops
            logging.getLogger(LOGGER_NAME).error("worker cannot start", extra={
                "reason": str(exc), "exit_code": exc.exit_code})
        else:
            print(f"mailwarden serve: {exc}", file=sys.stderr)
        return exc.exit_code


def tune_allocator() -> None:
    """Keep glibc malloc from holding on to the memory of large messages.

    By default glibc raises its mmap threshold after a large block is freed, so the next
    multi-megabyte message is carved from the heap, which fragments and never shrinks, and
    every thread gets its own arena: the fault suite's hostile-message barrage drove a worker
    past the rendered 512 MiB memory limit (an OOM kill in a pod). A fixed 128 KiB
    threshold returns large buffers to the system when freed; two arenas are plenty for one
    classification at a time. (In-process, so no environment variable is needed.)"""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _die_with_parent(parent_pid: int) -> None:
    """Exit if the supervisor is gone, and ask the kernel for SIGTERM when it goes."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        sys.exit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a supervised worker: CONFIG_JSON INDEX PARENT_PID."""
    argv = sys.argv[1:] if argv is None else argv
    config = ServeConfig.from_json(argv[0])
    _die_with_parent(int(argv[2]))
    return run_worker(config, index=int(argv[1]), supervised=True)


if __name__ == "__main__":
    sys.exit(main())
