"""The e2e fault report (issue 14): run the HA scenarios on the real control plane in their
long profile and write docs/fault/ha-report.md from the figures they record
(e2e/figures.py). `scripts/fault-report.sh --e2e` runs this.

    .venv/bin/python -m e2e.ha_report [--out docs/fault/ha-report.md] [-- PYTEST ARGS]
    .venv/bin/python -m e2e.ha_report --from E2E_OUT/ha-figures.jsonl   (render only)

Exit status: pytest's (the report is written anyway, a failed run marked as such).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from e2e import figures
from tests.fault.report import machine

REPO = Path(__file__).resolve().parents[1]
TESTS = [
    # The rollout with the operator takeover riding on it (scenario 5).
    "e2e/test_50_rollout.py::test_policy_change_rolls_out_with_zero_failed_calls_under_load",
    "e2e/test_60_disruption.py::test_draining_a_node_respects_the_pdb_with_zero_failed_calls",
    "e2e/test_65_node_loss.py",
    "e2e/test_70_hpa.py",
    # After the surge: it leaves 10 replicas, which the HPA keeps for its scale-down
    # stabilization (300 s), and the surge needs room above replicas.min.
    "e2e/test_75_rollout_at_scale.py",
    # Last: it kills the suite's PostgreSQL primary (scenario 6).
    "e2e/test_79_store_failover.py",
]
# What sets each scenario's floor (the figures table's last column).
FLOORS = {
    "drain": "the rolling replacement: an eviction admitted by the PDB at a time "
             "(maxUnavailable 1), then a new pod's scheduling, start and readiness "
             "(gRPC probe period, policy compile)",
    "node loss (killed)": "NotReady: the controller manager's --node-monitor-grace-period "
                          "(20 s on the e2e control plane, 50 s by default); then the "
                          "rendered tolerationSeconds (10 s); then a pod start",
    "node loss (vanished)": "as killed for capacity; the clients' slow calls: the client "
                            "keepalive (ping after 250 ms without a frame read, give up "
                            "after 500 ms more), then a retry on a live pod",
    "rollout at 10 replicas": "the Deployment controller's pace: maxSurge new pods at a "
                              "time, each Ready (gRPC probe) plus minReadySeconds (5 s) "
                              "before an old one is drained (preStop, drain, grace)",
    "surge -> HPA scale-up": "metrics-server's resolution (15 s) and the HPA's sync "
                             "(15 s) before the decision; then the pod's start and policy "
                             "compile; then the clients' re-resolution (a connection "
                             "reaching the server's max age, 15 s)",
    "surge over -> HPA scale-down": "the scale-down stabilization window (shortened to "
                                    "30 s here; 300 s by default) and the 10 %/min policy",
    "store failover": "the store's pool and readiness noticing the dead primary and "
                      "reconnecting through the multi-host DSN (libpq tries the dead "
                      "host, then takes the promoted one); with durability replicated, "
                      "the HA manager's clone of a new synchronous standby (pg_basebackup) "
                      "before the store acknowledges again",
    "operator takeover": "kopf peering: the dead peer's record expires after its lifetime "
                         "(15 s) and the standby notices at its next keep-alive",
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def render(lines: list[dict[str, Any]], command: str, minutes: float, status: int) -> str:
    info = machine()
    out = ["# HA on the real control plane: figures", "",
           "Written by `scripts/fault-report.sh --e2e` (e2e/ha_report.py) from the figures the "
           "e2e fault tests record; what each scenario does and asserts: "
           "[docs/fault.md](../fault.md#on-the-real-control-plane-e2e).", "",
           f"- **Date**: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
           f"- **Machine**: {info['cpu']}, {info['memory']} RAM, {info['system']}",
           f"- **Command**: `{command}` ({minutes:.1f} minutes; "
           f"{'PASSED' if status == 0 else 'FAILED: see the test output'})", "",
           "| Scenario | Clients (40 calls/s from 4 threads; 80/s from 8 for the rollout; "
           "5 s deadline) | "
           "Timeline (s after the fault) | What sets the floor |",
           "|---|---|---|---|"]
    for line in lines:
        seen = line.get("clients") or {}
        clients = f"answered {line.get('answered')}, failed {line.get('failed')} " \
                  f"{line.get('codes') or ''}"
        if seen:
            clients += (f"<br>disturbed (failed or > 1 s): {seen.get('calls')}, "
                        f"window {seen.get('window_seconds')} s")
        if "shed" in line:
            clients += f"<br>shed (RESOURCE_EXHAUSTED): {line['shed']}"
        slow = line.get("slow_calls")
        if slow:
            clients += (f"<br>over 0.5 s: {slow.get('calls')}, slowest {slow.get('slowest')} s, "
                        f"window {slow.get('window_seconds')} s")
        steps = sorted((line.get("timeline") or {}).items(), key=lambda kv: kv[1])
        timeline = "<br>".join(f"{k}: {_fmt(v)}" for k, v in steps)
        out.append(f"| {line['scenario']} | {clients} | {timeline} | "
                   f"{FLOORS.get(line['scenario'], '')} |")
    out += ["", "Raw figures (one JSON line per scenario run):", "", "```"]
    out += [json.dumps(line, sort_keys=True) for line in lines]
    out += ["```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="e2e.ha_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "fault" / "ha-report.md")
    parser.add_argument("--from", dest="source", type=Path,
                        help="render an earlier run's ha-figures.jsonl instead of running")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    if args.source:
        lines = [json.loads(x) for x in args.source.read_text().splitlines() if x.strip()]
        args.out.write_text(render(lines, f"e2e.ha_report --from {args.source}", 0.0, 0))
        print(f"ha report: {args.out} ({len(lines)} scenario runs from {args.source})")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="mw-ha-report-"))
    env = {**os.environ, "MAILWARDEN_E2E_PROFILE": "long",
           "E2E_OUT": os.environ.get("E2E_OUT", str(workdir))}
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
               *(args.pytest_args or TESTS)]
    began = time.monotonic()
    status = subprocess.run(command, cwd=REPO, env=env).returncode
    os.environ["E2E_OUT"] = env["E2E_OUT"]
    source = figures.path()
    lines = ([json.loads(x) for x in source.read_text().splitlines() if x.strip()]
             if source.is_file() else [])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(lines, "scripts/fault-report.sh --e2e",
                               (time.monotonic() - began) / 60, status))
    print(f"ha report: {args.out} ({len(lines)} scenario runs; pytest "
          f"{shlex.join(command[1:])} exited {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
