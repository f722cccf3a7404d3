"""Mailwarden: `mailwarden train` on the train split, `mailwarden serve` on loopback.

The policy is `examples/spampolicy.yaml`'s `spec.policy` with `model.configMapRef`
replaced by `model.file` (what local mode does), written with the model into a policy
directory; rule-count scaling swaps its rules for generated ones (benchmarks.rulegen).
The server runs with `--workers` = cores, `--grpc-port 0 --metrics-port 0 --port-file`
(the server picks free ports and tells us), `--host 127.0.0.1`, and
`--max-concurrent-rpcs` raised above the sweep's highest concurrency (its default, 64 per
worker, would turn the load generator's deepest level into RESOURCE_EXHAUSTED answers).
`--drain-seconds 0` (no load balancer to tell: stop at once). Everything else is the
server's default (log level info: no line per verdict).
"""

from __future__ import annotations

import copy
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.clients.mailwarden import MailwardenClient
from benchmarks.servers import Server, ServerFailed, ServerSet
from benchmarks.systems import SystemInfo, Training, version_of
from filter_server.policy.loader import POLICY_FILE, load_policy_dir
from filter_server.policy.validate import PolicyInvalid, unwrap_policy
from mailwarden import wire
from mailwarden_local.corpus import Split

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_POLICY = REPO / "examples" / "spampolicy.yaml"
MODEL_FILE = "model.json.gz"
SERVICE = wire.FILTER_SERVICE


def server_available() -> bool:
    """True when this checkout has the filter server (`filter_server/server`)."""
    return (REPO / "filter_server" / "server").is_dir()


def example_policy() -> dict[str, Any]:
    """The example SpamPolicy's policy with the model as a file in the policy directory."""
    policy = copy.deepcopy(unwrap_policy(yaml.safe_load(EXAMPLE_POLICY.read_text())))
    model = policy.setdefault("model", {})
    model.pop("configMapRef", None)
    model["file"] = MODEL_FILE
    return policy


def write_policy_dir(directory: Path, policy: dict[str, Any], model: Path) -> str:
    """Write policy.yaml and the model; validate; return the policy hash the server will
    report (so the load generator can check it talks to this very policy)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, directory / MODEL_FILE)
    (directory / POLICY_FILE).write_text(yaml.safe_dump(policy, sort_keys=False))
    try:
        return load_policy_dir(directory).hash
    except PolicyInvalid as exc:
        raise ServerFailed(f"benchmark policy in {directory} is invalid: {exc}") from None


class Mailwarden:
    name = "Mailwarden"

    def __init__(self, work: Path, servers: ServerSet, *, workers: int,
                 max_concurrency: int, dns: str = "", progress=print) -> None:
        self.work = work
        # Sender authentication resolves here (the benchmark's DNS sink, as for the peers).
        self.dns = dns
        self.servers = servers
        self.workers = workers
        self.max_concurrency = max_concurrency
        self.progress = progress
        self.model = work / MODEL_FILE
        self.server: Server | None = None
        self.port = 0
        self.ports: dict[str, Any] = {}
        self.expected_hash = ""
        self.rules = 0
        self.trained = Training()
        self.start_seconds = 0.0

    def train(self, split: Split) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        log = self.work / "train.log"
        self.servers.run("mailwarden train",
                         [sys.executable, "-m", "mailwarden.cli", "train",
                          "--ham", str(split.dir("train", "ham")),
                          "--spam", str(split.dir("train", "spam")), "-o", str(self.model)],
                         log=log, cwd=REPO)
        text = log.read_text(errors="replace")
        found = re.search(r"trained on (\d+) ham \+ (\d+) spam", text)
        ham, spam = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        self.trained = Training(ham=ham, spam=spam,
                                offered_ham=len(split.files("train", "ham")),
                                offered_spam=len(split.files("train", "spam")),
                                seconds=time.monotonic() - started, note="mailwarden train")

    def start(self, policy: dict[str, Any] | None = None, tag: str = "example",
              extra_args: tuple[str, ...] = ()) -> None:
        """Serve `policy` (default: the example policy) from a fresh policy directory;
        `extra_args` for `mailwarden serve` (the bound ports are in `self.ports`)."""
        policy = copy.deepcopy(policy if policy is not None else example_policy())
        if self.dns and "authentication" in policy:
            policy["authentication"].setdefault("dns", {})["servers"] = [self.dns]
        self.rules = len(policy.get("rules", [])) + len(policy.get("metaRules", []))
        policy_dir = self.work / f"policy-{tag}"
        self.expected_hash = write_policy_dir(policy_dir, policy, self.model)
        port_file = self.work / f"ports-{tag}.json"
        argv = [sys.executable, "-m", "mailwarden.cli", "serve",
                "--policy-dir", str(policy_dir), "--host", "127.0.0.1",
                "--grpc-port", "0", "--metrics-port", "0", "--port-file", str(port_file),
                "--workers", str(self.workers), "--drain-seconds", "0", "--grace-seconds", "5",
                "--max-concurrent-rpcs", str(max(64, 2 * self.max_concurrency)),
                *extra_args]
        started = time.monotonic()
        self.server = self.servers.start(f"mailwarden serve ({tag})", argv,
                                         log=self.work / f"serve-{tag}.log", cwd=REPO,
                                         port_file=port_file)
        self.ports = self.server.wait_ports(timeout=600)
        self.port = int(self.ports["grpc_port"])
        self.server.wait_healthy(f"127.0.0.1:{self.port}", service=SERVICE, timeout=600)
        self.start_seconds = time.monotonic() - started

    def roots(self) -> list[int]:
        return [self.server.pid] if self.server else []

    def client(self) -> MailwardenClient:
        return MailwardenClient(self.port, expected_hash=self.expected_hash)

    def stop(self) -> None:
        if self.server is not None:
            self.servers.stop(self.server, grace=30.0)
            self.server = None

    def info(self) -> SystemInfo:
        version = version_of([sys.executable, "-c",
                              "import importlib.metadata as m; "
                              "print('Mailwarden', m.version('mailwarden'))"])
        return SystemInfo(
            name=self.name, version=version, workers=self.workers,
            config=[f"mailwarden serve --workers {self.workers}, examples/spampolicy.yaml "
                    "(model.file), defaults otherwise (spam = action not ACCEPT, score >= "
                    "5)",
                    "model trained with mailwarden train on the same train split"])
