"""Server lifecycle in a real `mailwarden serve` process: health before and after the policy
compiles, SIGTERM (NOT_SERVING at once, drain, in-flight calls finish, new calls refused),
startup errors as one clear line."""

from __future__ import annotations

import os
import queue
import signal
import socket
import threading
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from mailwarden.filter.v1 import filter_pb2_grpc
from testkit.filter import HAM, SPAM, classify_request, mini_policy, wait_for, \
    write_policy


def test_not_serving_until_the_policy_compiles(servers, tmp_path: Path) -> None:
    empty = tmp_path / "later"
    empty.mkdir()
    server = servers(empty, "--policy-wait-seconds", "120", "--policy-poll-seconds", "0.2")
    server.wait_listening()
    assert server.health() == "NOT_SERVING"
    assert server.health("") == "NOT_SERVING"
    with pytest.raises(grpc.RpcError) as info:
        server.classify(HAM)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no policy loaded yet" in info.value.details()

    write_policy(empty, mini_policy(1))
    wait_for(lambda: server.health() == "SERVING", 60, "SERVING after the policy appeared")
    assert server.health("") == "SERVING"
    assert server.classify(SPAM).policy_hash
    assert server.process.poll() is None


@pytest.mark.parametrize("workers", [1, 2])
def test_policy_that_never_loads_exits_3_with_the_reason(servers, tmp_path: Path,
                                                         workers: int) -> None:
    broken = tmp_path / "broken"
    write_policy(broken, "thresholds: {tag: 9, quarantine: 1}\n")
    server = servers(broken, "--policy-wait-seconds", "1", "--policy-poll-seconds", "0.2",
                     workers=workers)
    assert server.wait_exit() == 3
    log = server.log()
    assert "the policy did not load" in log  # the JSON log line, with every error
    assert "thresholds" in log and "Traceback" not in log
    last = log.strip().splitlines()[-1]
    assert last.startswith("mailwarden serve: ") and "invalid policy in" in last
    if workers > 1:
        assert "the policy never loaded (waited 1s)" in last


class _Stream:
    """An open ClassifyStream driven message by message from the test."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._call = filter_pb2_grpc.FilterStub(channel).ClassifyStream(
            iter(self._requests.get, None), timeout=120)

    def ask(self, message: bytes, request_id: str):
        self._requests.put(classify_request(message, request_id))
        return next(self._call)

    def close(self) -> grpc.StatusCode:
        self._requests.put(None)
        for _ in self._call:
            pass
        return self._call.code()


def test_sigterm_not_serving_at_once_then_drain_and_in_flight_calls_finish(
        servers, policy_dir: Path) -> None:
    server = servers(policy_dir, "--drain-seconds", "3", "--grace-seconds", "60")
    server.wait_serving()
    # The in-flight call: a stream the test keeps open across the whole shutdown.
    stream = _Stream(server.channel())
    assert stream.ask(SPAM, "before").request_id == "before"

    server.signal(signal.SIGTERM)
    wait_for(lambda: server.health() == "NOT_SERVING", 10, "NOT_SERVING after SIGTERM")
    # Draining: NOT_SERVING, yet still answering (load balancers are catching up).
    assert server.classify(HAM).action

    # After the drain the server refuses new calls ...
    def refused() -> bool:
        try:
            server.classify(HAM, timeout=5)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE
        return False

    wait_for(refused, 30, "new calls to be refused", interval=0.2)
    assert server.process.poll() is None, "must wait for the call in flight"
    # ... while the call in flight goes on and completes normally.
    response = stream.ask(SPAM, "during-shutdown")
    assert response.request_id == "during-shutdown" and response.policy_hash
    assert stream.close() == grpc.StatusCode.OK
    assert server.wait_exit(30) == 0
    assert "stopped" in server.log()


def test_second_signal_cuts_the_drain_short(servers, policy_dir: Path) -> None:
    server = servers(policy_dir, "--drain-seconds", "600")
    server.wait_serving()
    server.signal(signal.SIGTERM)
    wait_for(lambda: server.health() == "NOT_SERVING", 10, "NOT_SERVING")
    server.signal(signal.SIGTERM)
    assert server.wait_exit(30) == 0
    assert "drain cut short" in server.log()


def _serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailwarden.cli", "serve", "--host",
                           "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_startup_errors_are_one_clear_line(tmp_path: Path, policy_dir: Path,
                                           workers: str) -> None:
    bad = tmp_path / "bad"
    write_policy(bad, "rules:\n- {name: X, target: body, pattern: '(a', score: 1}\n")
    cases = [
        (["--policy-dir", str(bad)], 3, "invalid policy in", "rules[0].pattern"),
        (["--policy-dir", str(tmp_path / "missing")], 3, "is not a directory", "missing"),
        (["--policy-dir", str(policy_dir), "--tls-dir", str(tmp_path)], 2, "--tls-dir",
         "tls.crt is missing"),
        (["--policy-dir", str(policy_dir), "--workers", "0"], 2, "--workers", "positive"),
    ]
    for args, code, *needles in cases:
        result = _serve("--workers", workers, *args)
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mailwarden serve: "), result.stderr
        for needle in needles:
            assert needle in lines[0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_is_a_clear_error(policy_dir: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "mailwarden.cli", "serve", "--policy-dir", str(policy_dir),
             "--host", "127.0.0.1", "--grpc-port", str(port), "--metrics-port", "0",
             "--workers", workers], capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_share_the_port_and_a_dead_worker_is_restarted(servers, policy_dir: Path
                                                                ) -> None:
    server = servers(policy_dir, "--log-level", "debug", "--drain-seconds", "0", workers=2)
    server.wait_serving()
    wait_for(lambda: server.metric("mailwarden_filter_serving_workers") == 2, 60,
             "2 workers serving")
    assert server.metric("mailwarden_filter_workers") == 2
    # Each new connection lands on one worker (the kernel picks, SO_REUSEPORT).
    for _ in range(24):
        assert server.classify(HAM).action
    assert server.metric("mailwarden_filter_requests_total", method="Classify",
                         code="OK") == 24, "one scrape shows the calls of all workers"
    pids = {line.split('"pid": ')[1].split(",")[0] for line in server.log().splitlines()
            if '"message": "classified"' in line}
    assert len(pids) == 2, "both workers served"

    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    victim = int(children.read_text().split()[0])
    # Scrapes keep working while a dead worker's metric files are cleaned up.
    scrape_failures: list[str] = []
    scraping = threading.Event()
    scraping.set()

    def scrape() -> None:
        while scraping.is_set():
            try:
                server.metrics_text()
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                scrape_failures.append(repr(exc))

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: server.metric("mailwarden_filter_worker_restarts_total") == 1, 60,
             "the worker restart")
    wait_for(lambda: server.metric("mailwarden_filter_serving_workers") == 2, 60,
             "2 workers serving again")
    scraping.clear()
    scraper.join(10)
    assert scrape_failures == [], "a scrape failed while a worker was replaced"
    assert str(victim) not in children.read_text().split()
    for _ in range(6):
        assert server.classify(SPAM).action
    metrics_dir = [line for line in server.log().splitlines() if '"supervising"' in line][0] \
        .split('"metrics_dir": "')[1].split('"')[0]
    assert Path(metrics_dir).is_dir()

    server.signal(signal.SIGTERM)
    assert server.wait_exit(60) == 0
    assert not Path(metrics_dir).exists(), "the multiprocess metrics dir is cleaned up"
    wait_for(lambda: not children.exists() or not children.read_text().split(), 10,
             "no worker left")
