"""Every knob of `mailwarden serve`, in one place, so the CLI, the supervisor and the worker
processes agree on names and defaults (docs/server.md lists them all)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mailwarden.wire import FILTER_GRPC_PORT, FILTER_METRICS_PORT

# Exit codes of `mailwarden serve` (and of each worker process).
EXIT_OK = 0
EXIT_CONFIG = 2        # bad flags, unreadable TLS files, port in use
EXIT_POLICY = 3        # the policy is invalid at startup or never loaded
EXIT_CRASHLOOP = 4     # workers kept crashing (supervisor gave up)

# The ports the operator renders, so a server started by hand answers where clients look.
DEFAULT_GRPC_PORT = FILTER_GRPC_PORT
DEFAULT_METRICS_PORT = FILTER_METRICS_PORT
DEFAULT_MAX_MESSAGE_BYTES = 25 * 1024 * 1024
# Room for the envelope and protobuf framing on top of the message itself, so a message of
# exactly --max-message-bytes is still accepted by the transport limit: the most an
# envelope can hold within the request limits of server/receiving.py (1,000 recipients of
# at most 320 characters, five fields of at most 1,024), rounded up.
ENVELOPE_ALLOWANCE_BYTES = 512 * 1024


def default_workers() -> int:
    """One worker per CPU this process may run on (CPU affinity, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ServeConfig:
    policy_dir: Path
    host: str = "[::]"
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    # A second, plaintext listener serving only grpc.health.v1 (None: none). The kubelet's
    # gRPC probe speaks plaintext, so with --tls-dir it cannot probe the gRPC port itself.
    health_port: int | None = None
    workers: int = 1
    drain_seconds: float = 5.0
    grace_seconds: float = 20.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Clients learn of new pods (HPA scale-up, restarts) only when they re-resolve, which a
    # connection reaching this age triggers: 15 s bounds that wait at a few cheap reconnects
    # a minute (docs/fault.md measured 2-54 s with 60 s).
    max_connection_age_ms: int = 15_000
    max_connection_age_grace_ms: int = 30_000
    max_concurrent_rpcs: int = 64
    tls_dir: Path | None = None
    require_client_cert: bool = False
    log_level: str = "info"
    policy_poll_seconds: float = 1.0
    # A candidate policy evaluated in shadow on a sample of traffic (server/shadow.py):
    # never answers; None = off.
    shadow_policy_dir: Path | None = None
    shadow_sample_rate: float = 0.1
    shadow_cpu_fraction: float = 0.1
    policy_wait_seconds: float = 0.0
    port_file: Path | None = None
    suppression_store: str | None = None
    suppression_stale_after: float = 10.0
    suppression_store_tls_dir: Path | None = None
    # The HMAC key of the suppression fingerprints (a mounted Secret; None: a random key per
    # pod, made by the supervisor), and the directory where the supervisor writes the index
    # every worker maps (None: a private temporary directory). mailwarden/fingerprint_index.py.
    suppression_key_file: Path | None = None
    suppression_index_dir: Path | None = None
    # Set by the supervisor for its workers, never by hand: the index file to map.
    suppression_index_file: Path | None = None
    # Mail-server protocols (filter_server/protocols): a port each, None = off (0 = pick a
    # free one); their connections' idle timeout, a message's deadline once received, and
    # the connections each worker keeps open per protocol.
    milter_port: int | None = None
    spamd_port: int | None = None
    rspamd_port: int | None = None
    protocol_idle_seconds: float = 300.0
    protocol_deadline_seconds: float = 30.0
    protocol_max_connections: int = 1000
    # The memory this worker may use, in bytes (0: unknown, no limit). The CLI fills it in
    # from $MAILWARDEN_MEMORY_LIMIT_BYTES or the cgroup; the supervisor hands each worker its
    # share. The budget for messages in flight is derived from it (server/memory.py).
    memory_limit_bytes: int = 0
    # CPU time one message may take to parse (filter_server/cpu_budget.py); 0 = no limit. Ordinary
    # 4 MiB messages (the most that is parsed) take 0.05-0.25 s; crafted ones took up to
    # 17 s before this bound.
    cpu_budget_seconds: float = 1.0
    # Requests (server/receiving.py): recipients per call; how long a call that reserved
    # memory may take to deliver its message (or a stream its next one); streams one
    # connection may hold open.
    max_recipients: int = 1000          # Postfix's smtpd_recipient_limit
    receive_timeout_seconds: float = 10.0
    max_streams_per_connection: int = 16
    # The UnsubscribeStore's signing keys (its mounted Secret: `current` and `previous`),
    # with which the bulk gate verifies one-click tokens (docs/authentication.md).
    signing_key_dir: Path | None = None
    # Learning (filter_server/server/learning.py): the folder labelled messages are stored
    # in for the next training run (None: Learn is disabled), the file holding the admin
    # credential Learn needs (None: $MAILWARDEN_ADMIN_TOKEN, else Learn is disabled), and
    # the limits per class: new messages per hour, messages in the folder.
    learn_dir: Path | None = None
    admin_token_file: Path | None = None
    learn_max_per_hour: int = 500
    learn_max_messages: int = 25000

    def protocol_ports(self) -> dict[str, int]:
        """The protocols switched on, with their ports."""
        ports = {"milter": self.milter_port, "spamd": self.spamd_port,
                 "rspamd": self.rspamd_port}
        return {name: port for name, port in ports.items() if port is not None}

    def to_json(self) -> str:
        doc = dataclasses.asdict(self)
        for key, value in doc.items():
            if isinstance(value, Path):
                doc[key] = str(value)
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        doc = json.loads(text)
        # Every field annotated `Path` (or `Path | None`) went out as a string: a list of
        # names here went stale each time a path setting was added.
        for field in dataclasses.fields(cls):
            if "Path" in str(field.type) and doc.get(field.name) is not None:
                doc[field.name] = Path(doc[field.name])
        return cls(**doc)

    def problems(self) -> list[str]:
        """What is wrong with these settings, as messages for the user (empty when fine)."""
        out = []
        for name in ("grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                out.append(f"--{name.replace('_', '-')} must be between 0 and 65535 "
                           f"(got {port})")
        if self.grpc_port and self.grpc_port == self.metrics_port:
            out.append("--grpc-port and --metrics-port must differ")
        positive = ("workers", "max_message_bytes", "max_concurrent_rpcs",
                    "max_connection_age_ms", "policy_poll_seconds", "max_recipients",
                    "receive_timeout_seconds", "max_streams_per_connection",
                    "learn_max_per_hour", "learn_max_messages")
        for name in positive:
            if getattr(self, name) <= 0:
                out.append(f"--{name.replace('_', '-')} must be positive "
                           f"(got {getattr(self, name)})")
        for name in ("shadow_sample_rate", "shadow_cpu_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                out.append(f"--{name.replace('_', '-')} must be between 0 and 1 "
                           f"(got {getattr(self, name)})")
        for name in ("drain_seconds", "grace_seconds", "max_connection_age_grace_ms",
                     "policy_wait_seconds", "memory_limit_bytes", "cpu_budget_seconds"):
            if getattr(self, name) < 0:
                out.append(f"--{name.replace('_', '-')} must not be negative "
                           f"(got {getattr(self, name)})")
        if self.suppression_stale_after <= 0:
            out.append(f"--suppression-stale-after must be positive "
                       f"(got {self.suppression_stale_after})")
        if self.suppression_store is not None and ":" not in self.suppression_store:
            out.append(f"--suppression-store must be HOST:PORT (got "
                       f"{self.suppression_store!r})")
        if self.suppression_store_tls_dir is not None:
            if self.suppression_store is None:
                out.append("--suppression-store-tls-dir needs --suppression-store")
            elif not self.suppression_store_tls_dir.is_dir():
                # Only the directory is checked: its files are read at each connection
                # attempt, so a Secret mounted late is picked up without a restart.
                out.append(f"--suppression-store-tls-dir: {self.suppression_store_tls_dir} "
                           "is not a directory")
        if self.port_file is not None:
            directory = self.port_file.parent
            if not directory.is_dir():
                out.append(f"--port-file: directory {directory} does not exist")
            elif self.port_file.is_dir():
                out.append(f"--port-file: {self.port_file} is a directory")
            elif not os.access(directory, os.W_OK):
                out.append(f"--port-file: cannot write in {directory}")
        if self.learn_dir is not None:
            if self.learn_dir.exists() and not self.learn_dir.is_dir():
                out.append(f"--learn-dir: {self.learn_dir} is not a directory")
            elif not os.access(self.learn_dir if self.learn_dir.exists()
                               else self.learn_dir.parent, os.W_OK):
                out.append(f"--learn-dir: cannot write in {self.learn_dir}")
        if self.admin_token_file is not None:
            try:
                if not self.admin_token_file.read_text().strip():
                    out.append(f"--admin-token-file: {self.admin_token_file} is empty")
            except (OSError, UnicodeDecodeError) as exc:
                out.append(f"--admin-token-file: cannot read {self.admin_token_file} "
                           f"({getattr(exc, 'strerror', None) or exc})")
        if self.require_client_cert and self.tls_dir is None:
            out.append("--require-client-cert needs --tls-dir")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            out.append(f"--log-level must be debug, info, warning or error "
                       f"(got {self.log_level!r})")
        taken = {self.grpc_port: "--grpc-port", self.metrics_port: "--metrics-port"}
        if self.health_port is not None:
            taken.setdefault(self.health_port, "--health-port")
        for name, port in self.protocol_ports().items():
            if not 0 <= port <= 65535:
                out.append(f"--{name}-port must be between 0 and 65535 (got {port})")
            elif port and port in taken:
                out.append(f"--{name}-port and {taken[port]} must differ (both {port})")
            taken.setdefault(port, f"--{name}-port")
        for name in ("protocol_idle_seconds", "protocol_deadline_seconds",
                     "protocol_max_connections"):
            if getattr(self, name) <= 0:
                out.append(f"--{name.replace('_', '-')} must be positive "
                           f"(got {getattr(self, name)})")
        if self.health_port is not None:
            if not 1 <= self.health_port <= 65535:
                out.append(f"--health-port must be between 1 and 65535 (got "
                           f"{self.health_port})")
            elif self.health_port in (self.grpc_port, self.metrics_port):
                out.append("--health-port must differ from --grpc-port and --metrics-port")
        return out
