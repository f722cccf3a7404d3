"""The benchmark's smoke run, as CI runs it: `python -m benchmarks.run --smoke` — Mailwarden
only, 300 test messages, a model trained on 300 + 300 messages, two short concurrency
levels, rule-count scaling at 10 and 100 rules. A real `mailwarden serve` in a real process
is trained, started, driven over gRPC and stopped by the suite itself.

Nothing here is timed: the figures are printed, never compared with targets. What is
checked is what a user of the suite would notice: the run completes, every message got a
verdict from the policy it was meant to be served, the report is written, and no server is
left running — also when the run is interrupted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.systems.mailwarden import server_available
from tests.benchmarks.helpers import CORPUS, REPO, processes_mentioning

pytestmark = [
    pytest.mark.skipif(not server_available(),
                       reason="filter_server/server is not on this branch yet: the smoke "
                       "benchmark needs `mailwarden serve`"),
    pytest.mark.skipif(not (CORPUS / ".complete").exists(),
                       reason="the SpamAssassin corpus is missing: run scripts/bootstrap.sh"),
]


def _bench(*args: str, work: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.run", "--smoke", "--work", str(work), *args]


def _wait_gone(text: str, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = processes_mentioning(text)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_smoke_run_reports_every_message_and_leaves_nothing_running(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    proc = subprocess.run(_bench("--out", str(out), work=work), cwd=REPO,
                          capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stderr[-4000:]

    data = json.loads((out / "results.json").read_text())
    (mailwarden,) = data["systems"]
    assert mailwarden["name"] == "Mailwarden" and not mailwarden["error"]
    accuracy = mailwarden["accuracy"]
    # every test message got a verdict, none failed
    assert accuracy["ham"] + accuracy["spam"] == data["settings"]["test_messages"] == 300
    assert accuracy["errors"] == 0
    assert 0 < accuracy["spam_flagged"] <= accuracy["spam"]
    assert [lv["concurrency"] for lv in mailwarden["levels"]] == [1, 4]
    for level in mailwarden["levels"]:
        # errors would include answers from a policy other than the one written
        assert level["errors"] == 0, level["first_error"]
        assert level["completed"] > 0 and level["throughput"] > 0
        assert level["server_cpu_s"] > 0  # the server's processes were found in /proc
    assert mailwarden["peak_pss_mib"] > 0
    assert [row["rules"] for row in data["scaling"]["rows"]] == [10, 100]
    for row in data["scaling"]["rows"]:
        assert row["level"]["errors"] == 0 and row["level"]["completed"] > 0
    assert data["leftovers"] == [] and data["errors"] == []

    report = (out / "results.md").read_text()
    assert "| Mailwarden |" in report and data["command"] in report
    assert "## Rule-count scaling (Mailwarden)" in report
    assert _wait_gone(str(work)) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_stops_every_server(tmp_path: Path, signum: int) -> None:
    work = tmp_path / "work"
    proc = subprocess.Popen(_bench("--duration", "60", "--out", str(tmp_path / "out"),
                                   work=work),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)
    seen = []
    try:
        # interrupt while the server is up and under load
        deadline = time.monotonic() + 180
        for line in proc.stdout:
            seen.append(line)
            if "false positives" in line:  # accuracy pass done, level C=1 under way
                break
            assert time.monotonic() < deadline, "".join(seen)
        assert any("serve" in p for p in processes_mentioning(str(work))), "".join(seen)
        proc.send_signal(signum)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted; every server was stopped" in rest
    assert _wait_gone(str(work)) == []
