"""A rehearsal of the kind suite's in-cluster client (e2e/incluster/mwclient.py) against real
servers on loopback: two `mailwarden serve` replicas following a real `mailwarden
unsubscribe-server` (embedded SQLite), so the load recorder and the one-click flow the
cluster Jobs run are known to work before a cluster is ever involved.

Differences from the cluster, forced by having none: replicas are addressed as
127.0.0.1:PORT pairs instead of through the headless Service's DNS, and the one-click
endpoint is the store's own loopback port instead of its Service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from e2e import oneclick
from e2e.incluster import mwclient
from e2e.jobs import parts
from mailwarden.filter.v1 import filter_pb2
from mailwarden.tokens import generate_key, load_keyring, mint_token
from mailwarden_local.projection import project
from testkit.filter import HAM, SPAM, Server, mini_policy, write_policy
from testkit.pg import PgCluster
from testkit.store import StoreProcess

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "e2e" / "incluster" / "mwclient.py"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def messages(tmp_path: Path) -> Path:
    directory = tmp_path / "messages"
    # The Jobs mount a ConfigMap: its `..data` entries must be skipped.
    project(directory, {"spam.eml": SPAM, "ham.eml": HAM})
    return directory


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[StoreProcess, Path]]:
    key = generate_key()
    key_file = tmp_path / "current"
    key_file.write_text(key)
    proc = StoreProcess(tmp_path, ["--store", "sqlite", "--sqlite-path",
                                   str(tmp_path / "store.db")],
                        env={"MAILWARDEN_SIGNING_KEY": key})
    yield proc.start(), key_file
    proc.close()


@pytest.fixture
def replicas(tmp_path: Path, store: tuple[StoreProcess, Path]) -> Iterator[list[Server]]:
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    started = [Server(tmp_path, policy_dir, ["--suppression-store", store[0].target,
                                             "--drain-seconds", "0"], workers=1)
               for _ in range(2)]
    try:
        for server in started:
            server.wait_serving()
        yield started
    finally:
        for server in started:
            server.kill()


class Client:
    """`python mwclient.py ARGS` as the Jobs run it (the image's python there; the test
    environment's here, from a directory that is not the checkout, so that `operator/`
    never shadows the standard library)."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.stderr = workdir / f"mwclient-{time.monotonic_ns()}.err"
        self.parts_seen: list[str] = []  # oneclick-load's records, read by summary()
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(CLIENT), *args],
                                         stdout=subprocess.PIPE, stderr=err, text=True,
                                         cwd="/", env={**os.environ, "PYTHONPATH": ""},
                                         start_new_session=True)

    def line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"mwclient ended: {self.stderr.read_text()}"
        return line

    def summary(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            line = self.line()
            if line.startswith(mwclient.SUMMARY_PREFIX):
                break
            if line.startswith(mwclient.PART_PREFIX):
                self.parts_seen.append(line)
            assert time.monotonic() < deadline, "no summary from mwclient"
        assert self.proc.wait(30) == 0, self.stderr.read_text()
        return json.loads(line[len(mwclient.SUMMARY_PREFIX):])

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        if self.proc.stdout:
            self.proc.stdout.close()


def test_load_records_every_answer_and_every_failed_call(replicas: list[Server],
                                                         messages: Path,
                                                         tmp_path: Path) -> None:
    stop_file = tmp_path / "stop"
    target = "ipv4:" + ",".join(s.address for s in replicas)
    load = Client(tmp_path, "load", "--target", target, "--messages", str(messages),
                  "--threads", "2", "--rate", "100", "--deadline", "1", "--report-every",
                  "0.5", "--stop-file", str(stop_file), "--max-seconds", "120")
    try:
        while json.loads(load.line())["ok"] < 50:
            pass
        policy_hash = replicas[0].classify(HAM).policy_hash
        # Every replica gone: from now on each call fails, and must be counted.
        for server in replicas:
            server.kill()
        while json.loads(load.line())["failed"] < 5:
            pass
        stop_file.touch()
        summary = load.summary()
    finally:
        load.close()
    print({k: summary[k] for k in ("ok", "failed", "codes", "stopped_by", "latency_ms")})
    assert summary["stopped_by"] == "stop-file"
    assert summary["ok"] >= 50 and summary["failed"] >= 5
    assert set(summary["codes"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, summary["codes"]
    assert sum(summary["codes"].values()) == summary["failed"]
    assert summary["hashes"] == {policy_hash: summary["ok"]}
    assert summary["failures"][0]["request_id"].startswith(summary["name"])


def test_oneclick_flow_reaches_every_replica(replicas: list[Server], messages: Path,
                                             store: tuple[StoreProcess, Path]) -> None:
    proc, key_file = store
    # Every replica's suppression cache is live before the flow starts (as in the cluster,
    # where the SpamPolicy's SuppressionReady condition is waited for).
    deadline = time.monotonic() + 30
    while any(s.classify(HAM).suppression_state != filter_pb2.SUPPRESSION_FRESH
              for s in replicas):
        assert time.monotonic() < deadline, "suppression caches never became fresh"
        time.sleep(0.1)
    url = f"{proc.http_url}/u/{oneclick.mint(key_file, oneclick.ADDRESS)}"
    tampered = f"{proc.http_url}/u/{oneclick.tamper(oneclick.mint(key_file, oneclick.OTHER))}"
    flow = Client(messages.parent, "oneclick", "--url", url, "--tampered-url", tampered,
                  "--address", oneclick.ADDRESS, "--other", oneclick.OTHER, "--scope",
                  oneclick.SCOPE, "--messages", str(messages),
                  "--filter-addresses", ",".join(s.address for s in replicas))
    try:
        result = flow.summary()
    finally:
        flow.close()
    print("one-click on loopback:", oneclick.check(result))


def test_oneclick_load_across_a_store_failover(messages: Path, tmp_path: Path) -> None:
    """e2e/test_79_store_failover.py on loopback: a `--durability replicated` store on a
    real PostgreSQL primary + synchronous standby (multi-host DSN), two filter replicas
    following it, `mwclient.py oneclick-load` POSTing links while the primary is killed and
    the standby promoted (testkit's fail_over), judged by the same code as on the cluster."""
    key = generate_key()
    key_file = tmp_path / "current"
    key_file.write_text(key)
    keys = load_keyring(key_file=key_file)
    with PgCluster(standby=True, fsync=False) as cluster:
        cluster.create_database("app")
        dsn_file = tmp_path / "dsn"
        dsn_file.write_text(cluster.multi_host_dsn("app"))
        store = StoreProcess(tmp_path, ["--store", "postgres", "--dsn-file", str(dsn_file),
                                        "--durability", "replicated"],
                             env={"MAILWARDEN_SIGNING_KEY": key}).start()
        policy_dir = tmp_path / "policy"
        write_policy(policy_dir, mini_policy(1))
        replicas = [Server(tmp_path, policy_dir, ["--suppression-store", store.target,
                                                  "--drain-seconds", "0"], workers=1)
                    for _ in range(2)]
        load = None
        try:
            for server in replicas:
                server.wait_serving()
            links = [{"address": f"fo-{i}@example.com",
                      "url": f"{store.http_url}/u/"
                             f"{mint_token(keys, f'fo-{i}@example.com', oneclick.SCOPE)}"}
                     for i in range(3000)]
            (tmp_path / "links.json").write_text(json.dumps(links))
            stop_file = tmp_path / "stop"
            load = Client(tmp_path, "oneclick-load", "--links", str(tmp_path / "links.json"),
                          "--filter-addresses", ",".join(s.address for s in replicas),
                          "--scope", oneclick.SCOPE, "--probe", oneclick.OTHER,
                          "--messages", str(messages), "--rate", "50", "--threads", "4",
                          "--stop-file", str(stop_file), "--max-seconds", "120")

            def wait_acked(count: int, seconds: int) -> int:
                for _ in range(seconds):  # a progress line a second
                    ok = json.loads(load.line())["ok"]
                    if ok >= count:
                        return ok
                raise AssertionError(f"fewer than {count} acknowledged after {seconds} s")
            wait_acked(20, 60)
            times = cluster.fail_over()
            wait_acked(wait_acked(0, 1) + 20, 60)
            stop_file.touch()
            summary = load.summary()
        finally:
            if load is not None:
                load.close()
            for server in replicas:
                server.kill()
            store.close()
        stored = {row[0] for row in cluster.primary.execute(
            "SELECT address FROM unsubscribe_suppressions", dbname="app")}
    records = parts("".join(load.parts_seen))
    seen = oneclick.judge_failover(summary, records, killed=times.killed, stored=stored,
                                   pods=2, stale_after=10.0, outage_limit=30.0)
    print("\nstore failover on loopback:", oneclick.describe_failover(seen))


def test_resolve_lists_the_addresses_dns_gives(tmp_path: Path) -> None:
    resolve = Client(tmp_path, "resolve", "localhost", "--port", "9090")
    try:
        assert "127.0.0.1:9090" in resolve.summary()["addresses"]
    finally:
        resolve.close()
