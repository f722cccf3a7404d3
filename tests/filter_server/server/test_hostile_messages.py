"""One crafted e-mail must not take a worker down (issue 20, items 1 and 10).

A real `mailwarden serve` (one worker, a policy with a model, so the tokenizer runs too)
gets the messages that froze it: text/html of 1 MiB of "<" (100% CPU for minutes, health
timing out, SIGTERM ignored), a 64 KB body of "a…@b…" (28 s in the tokenizer), a From of
500 "(" (RecursionError: INTERNAL), a Content-Type of 256 KB of ";" after a quote (about a
minute in the stdlib's parameter splitter). Each now gets a verdict within seconds, and
health checks keep answering while it is classified. A message that costs the parser more
than the CPU budget (4 MiB of short lines under 30 nested boundaries: ~4 s) is classified
on what was read in time, and SIGTERM during it drains and stops the server as usual."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from filter_server.bayes.model import BayesModel
from mailwarden.filter.v1 import filter_pb2_grpc
from testkit.filter import classify_request, mini_policy, wait_for, write_policy

MIB = 1024 * 1024


def slow_message() -> bytes:
    head = b"From: bulk@spam.example\r\nSubject: free money\r\n" + b"".join(
        f"Content-Type: multipart/mixed; boundary=\"n{i}\"\r\n\r\n--n{i}\r\n".encode()
        for i in range(30))
    body = b"Content-Type: text/plain\r\n\r\nbuy viagra now\r\n"
    return head + body + b"x\r\n" * ((4 * MIB - len(head) - len(body)) // 3)


HOSTILE = {
    "text/html of 1 MiB of <": b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n"
                               + b"<" * MIB,
    "64 KB body of a...@b...": b"From: a@example.com\r\n\r\n" + b"a" * 32768 + b"@"
                               + b"b" * 32767,
    "From of 500 (": b"From: " + b"(" * 500 + b"\r\nSubject: hi\r\n\r\nhello\r\n",
    "Content-Type of 256 KB of ; after a quote":
        b"From: a@example.com\r\nContent-Type: text/plain; a=\"" + b";" * 262144
        + b"\r\n\r\nhello\r\n",
}


@pytest.fixture
def model_policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policy"
    policy = mini_policy(1)
    policy["model"] = {"file": "model.json.gz", "weight": 3}
    policy["metaRules"].append({"name": "TOO_COSTLY", "expression": "SCAN_BUDGET_EXCEEDED",
                                "score": 4.0})
    model = BayesModel(10, 10, {"subject:viagra": (9, 0), "lunch": (0, 9), "free": (7, 2)})
    write_policy(directory, policy, {"model.json.gz": model.to_bytes()})
    return directory


class HealthWatch:
    """Health checks, one after another on fresh connections, while the `with` block runs;
    the slowest answer (a check that fails counts as its 5 s timeout)."""

    def __init__(self, server) -> None:
        self.server = server
        self.slowest = 0.0
        self.answers: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            started = time.monotonic()
            self.answers.append(self.server.health())
            self.slowest = max(self.slowest, time.monotonic() - started)
            self._done.wait(0.05)

    def __enter__(self) -> "HealthWatch":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join(10)


def test_crafted_messages_get_verdicts_and_health_keeps_answering(servers,
                                                                  model_policy_dir) -> None:
    server = servers(model_policy_dir).wait_serving()
    with grpc.insecure_channel(server.address) as channel:
        stub = filter_pb2_grpc.FilterStub(channel)
        for name, raw in HOSTILE.items():
            with HealthWatch(server) as health:
                started = time.monotonic()
                try:
                    response = stub.Classify(classify_request(raw, name), timeout=30)
                except grpc.RpcError as exc:
                    pytest.fail(f"{name}: {exc.code().name} {exc.details()}")
                took = time.monotonic() - started
            print(f"\n{name}: {response.action} in {took:.2f} s, slowest health check "
                  f"{health.slowest:.2f} s")
            assert took < 5, f"{name}: the verdict took {took:.1f} s"
            assert health.slowest < 2, f"{name}: a health check took {health.slowest:.1f} s"
            assert set(health.answers) == {"SERVING"}, health.answers
    assert "Traceback" not in server.log()


def test_a_message_over_the_cpu_budget_is_classified_on_what_was_read(
        servers, model_policy_dir) -> None:
    server = servers(model_policy_dir, "--cpu-budget-seconds", "0.5").wait_serving()
    with HealthWatch(server) as health:
        started = time.monotonic()
        response = server.classify(slow_message(), timeout=30)
        took = time.monotonic() - started
    hits = {h.name: h for h in response.hits}
    print(f"\n{took:.2f} s, slowest health check {health.slowest:.2f} s: "
          f"{hits['SCAN_BUDGET_EXCEEDED'].description}")
    assert {"BODY_VIAGRA", "SCAN_BUDGET_EXCEEDED", "TOO_COSTLY"} <= set(hits)
    assert took < 5
    assert health.slowest < 2 and set(health.answers) == {"SERVING"}


def test_sigterm_while_a_costly_message_is_classified_stops_the_server(
        servers, model_policy_dir) -> None:
    # The budget is CPU time: under a load of 14 on 2 cores its 2 s (4 s at most with
    # decoding what was read) took longer than a 10 s grace period of wall-clock time.
    server = servers(model_policy_dir, "--drain-seconds", "0.5", "--grace-seconds", "40",
                     "--cpu-budget-seconds", "2").wait_serving()
    with grpc.insecure_channel(server.address) as channel:
        call = filter_pb2_grpc.FilterStub(channel).Classify.future(
            classify_request(slow_message()), timeout=30)
        time.sleep(0.5)  # received and being parsed
        server.signal(signal.SIGTERM)
        wait_for(lambda: server.health() in ("NOT_SERVING", "UNAVAILABLE"), 2,
                 "NOT_SERVING after SIGTERM")
        response = call.result()  # the call in flight is answered during the grace period
    assert "SCAN_BUDGET_EXCEEDED" in {h.name for h in response.hits}
    assert server.wait_exit(50) == 0
