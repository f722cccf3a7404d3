"""Real `mailwarden serve` processes for the tests: ephemeral ports (the server binds port 0
and reports the ports in a --port-file), 127.0.0.1 only, own process group (the one
`ServerProcess`, testkit.processes), and a fixture that kills every group it
started; plus the small policy and messages the tests share."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mailwarden import wire
from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from mailwarden_local.projection import project
from testkit.processes import ServerProcess, health_status, mailwarden_argv

SERVICE = wire.FILTER_SERVICE
START_TIMEOUT = 60.0

# A small policy touching every rule target, lists and a meta rule; no model, so it
# compiles in milliseconds. `version` shifts the tag threshold to make a distinct hash.
def mini_policy(version: int = 1) -> dict:
    return {
        "thresholds": {"tag": 3 + version, "quarantine": 12, "reject": 20},
        "rules": [
            {"name": "SUBJ_MONEY", "target": "header", "header": "Subject",
             "pattern": r"(?i)\bfree money\b", "score": 2.0},
            {"name": "BODY_VIAGRA", "target": "body", "pattern": r"(?i)\bviagra\b",
             "score": 3.0},
            {"name": "URI_IP", "target": "uri", "pattern": r"^https?://\d+\.\d+\.\d+\.\d+",
             "score": 1.5},
            {"name": "SENDER_DIGITS", "target": "sender", "pattern": r"\d{4,}@",
             "score": 0.5},
        ],
        "metaRules": [{"name": "MONEY_AND_PILLS", "expression": "SUBJ_MONEY && BODY_VIAGRA",
                       "score": 4.0}],
        "lists": {"block": {"domains": ["spam.example"], "score": 1.0}},
    }


def policy_bytes(policy: dict) -> bytes:
    return yaml.safe_dump(policy).encode()


def write_policy(directory: Path, policy: dict | str, extra: dict[str, bytes] | None = None
                 ) -> None:
    """Project `policy` into `directory` in the kubelet's ConfigMap layout."""
    text = policy if isinstance(policy, str) else policy_bytes(policy).decode()
    project(directory, {"policy.yaml": text.encode(), **(extra or {})})


SPAM = (b"From: winner12345@spam.example\r\nTo: you@example.com\r\n"
        b"Subject: FREE MONEY for you\r\n\r\nBuy viagra now at http://10.1.2.3/shop\r\n")
HAM = (b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: lunch\r\n\r\n"
       b"Shall we meet at noon?\r\n")


def classify_request(message: bytes, request_id: str = "t") -> filter_pb2.ClassifyRequest:
    return filter_pb2.ClassifyRequest(request_id=request_id, message=message,
                                      envelope=filter_pb2.Envelope(mail_from="x@example.com"))


def outcomes(calls: "list[grpc.Future]") -> list[str]:
    """The status code name each call ended with ("OK" for an answer), in order."""
    names = []
    for call in calls:
        try:
            call.result()
            names.append("OK")
        except grpc.RpcError as exc:
            names.append(exc.code().name)
    return names


def wait_for(predicate: Callable[[], object], timeout: float, what: str,
             interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Server(ServerProcess):
    """`mailwarden serve` for a test: started at once, on 127.0.0.1 with ephemeral ports."""

    def __init__(self, workdir: Path, policy_dir: Path, args: list[str], workers: int,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        port_file = workdir / f"ports-{time.monotonic_ns()}.json"
        super().__init__(
            "mailwarden serve",
            mailwarden_argv("serve", "--policy-dir", str(policy_dir), "--host", "127.0.0.1",
                            "--grpc-port", "0", "--metrics-port", "0",
                            "--workers", str(workers), "--port-file", str(port_file), *args),
            log_path=port_file.with_suffix(".log"), port_file=port_file,
            env={**os.environ, **(env or {})})
        self.grpc_port = self.metrics_port = 0
        self._channels: list[grpc.Channel] = []
        self.start()

    # --- startup ------------------------------------------------------------------------
    def wait_listening(self, timeout: float = START_TIMEOUT) -> Server:
        ports = self.wait_ports(timeout)
        self.grpc_port, self.metrics_port = ports["grpc_port"], ports["metrics_port"]
        self.ports = ports  # with `<protocol>_port` for the mail-server protocols
        return self

    def wait_serving(self, timeout: float = START_TIMEOUT) -> Server:
        self.wait_listening(timeout)
        self.wait_healthy(self.address, service=SERVICE, timeout=timeout)
        return self

    # --- talking to it ------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self._channels.append(channel)
        return channel

    def stub(self) -> filter_pb2_grpc.FilterStub:
        return filter_pb2_grpc.FilterStub(self.channel())

    def classify(self, message: bytes, timeout: float = 10) -> filter_pb2.ClassifyResponse:
        with grpc.insecure_channel(self.address) as channel:
            return filter_pb2_grpc.FilterStub(channel).Classify(
                classify_request(message), timeout=timeout)

    def health(self, service: str = SERVICE) -> str:
        """SERVING / NOT_SERVING / ... or the status code name if the check failed."""
        return health_status(self.address, service, timeout=5)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    # --- ending it ----------------------------------------------------------------------
    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        for channel in self._channels:
            channel.close()
        super().kill()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: servers(policy_dir, *args, workers=1) starts one; all are killed at the end."""
    started: list[Server] = []

    def start(policy_dir: Path, *args: str, workers: int = 1,
              env: dict[str, str] | None = None) -> Server:
        server = Server(tmp_path, policy_dir, list(args), workers, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A kubelet-layout policy directory holding mini_policy(1)."""
    directory = tmp_path / "policy"
    write_policy(directory, mini_policy(1))
    return directory
