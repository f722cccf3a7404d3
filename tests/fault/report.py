"""The fault report: run every scenario, print its figures as it finishes, and write
docs/fault/report.md (date, machine, command, a figures table per scenario) with the PNGs.

    scripts/fault-report.sh                      # = bootstrap + this, --long
    .venv/bin/python -m tests.fault.report --long
    .venv/bin/python -m tests.fault.report --short --only sigkill,rollout --out /tmp/r

Exit status 1 if any scenario failed one of its checks (the report is written anyway).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

from tests.fault import filter_scenarios, unsub_scenarios
from tests.fault.common import PROFILES, REPO, CorpusMissing, FaultEnv, ScenarioResult
from testkit.procfs import load_average

SCENARIOS = {
    "rollout": filter_scenarios.rollout,
    "sigterm": filter_scenarios.sigterm,
    "sigkill": filter_scenarios.sigkill,
    "surge": filter_scenarios.surge,
    "pg_failover": unsub_scenarios.pg_failover,
    "store_kill": unsub_scenarios.store_kill,
    "barrage": filter_scenarios.barrage,
    "large_burst": filter_scenarios.large_burst,
}
# Figures shown in the summary table (label prefixes), per scenario.
HEADLINES = {
    "rollout": ["failed calls", "every response carries the new hash after",
                "rollout duration"],
    "sigterm": ["failed calls", "exit", "receiving calls again after"],
    "sigkill": ["failed calls", "error/latency window", "receiving calls again after"],
    "surge": ["surge ×5: offered", "surge ×5: latency", "beyond capacity: offered",
              "slowest call"],
    "pg_failover": ["unsubscribes acknowledged", "unavailability", "retried"],
    "store_kill": ["postgres: unavailability", "sqlite: unavailability",
                   "postgres: unsubscribes acknowledged", "sqlite: unsubscribes acknowledged"],
    "barrage": ["messages", "answers by code", "RSS per pod", "throughput"],
    "large_burst": ["bursts", "large messages: answers by code",
                    "ordinary mail beside them", "RSS per pod", "memory limit"],
}


def machine() -> dict[str, str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "?"
    import grpc

    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "memory": memory,
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "grpcio": grpc.__version__}


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _headline(result: ScenarioResult) -> str:
    picked = []
    for prefix in HEADLINES.get(result.key, []):
        for label, value in result.figures:
            if label.startswith(prefix):
                picked.append(f"{label}: {value}")
                break
    return "<br>".join(_escape(p) for p in picked)


def markdown(results: list[ScenarioResult], errors: dict[str, str], *, profile: str,
             command: str, started: datetime.datetime, seconds: float,
             images: list[Path], out: Path) -> str:
    info = machine()
    lines = [
        "# Fault-injection report",
        "",
        f"- **Date**: {started:%Y-%m-%d %H:%M} UTC",
        f"- **Machine**: {info['cpu']}, {info['memory']} RAM, {info['system']}, "
        f"Python {info['python']}, grpcio {info['grpcio']}",
        f"- **Command**: `{command}` (profile `{profile}`, {seconds / 60:.1f} minutes)",
        "- **Load**: the machine is shared with other work; each scenario lists the "
        "`uptime` load averages (1, 5, 15 min) before → after it. Latencies are inflated by "
        "that contention; the zero-failure / zero-loss checks are strict.",
        "- What each scenario does and asserts: [docs/fault.md](../fault.md).",
        "",
        "## Summary",
        "",
        "| Scenario | Result | Key figures | Load before → after |",
        "|---|---|---|---|",
    ]
    for result in results:
        lines.append(f"| {_escape(result.title)} | {'PASS' if result.ok else '**FAIL**'} | "
                     f"{_headline(result)} | {result.load_before} → {result.load_after} |")
    for key, error in errors.items():
        lines.append(f"| {key} | **ERROR** | {_escape(error.splitlines()[-1])} | |")
    lines.append("")
    for image in images:
        lines += [f"![{image.stem}]({image.relative_to(out).as_posix()})", ""]
    for result in results:
        lines += [f"## {result.title}", "",
                  f"{'PASS' if result.ok else '**FAIL**'} — {result.seconds:.0f} s, load "
                  f"average {result.load_before} → {result.load_after}", "",
                  "| Figure | Value |", "|---|---|"]
        lines += [f"| {_escape(label)} | {_escape(value)} |" for label, value in result.figures]
        lines += ["", "Checks:", ""]
        lines += [f"- {'✅' if c.ok else '❌'} {_escape(c.what)}"
                  + ("" if c.ok else f" — {_escape(c.detail)}") for c in result.checks]
        lines.append("")
    for key, error in errors.items():
        lines += [f"## {key}: error", "", "```", error.strip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the fault scenarios and write the "
                                     "report (docs/fault/report.md and PNGs).")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--long", dest="profile", action="store_const", const="long",
                       help="the long versions (default; about 20 minutes)")
    group.add_argument("--short", dest="profile", action="store_const", const="short",
                       help="the CI versions (about 3 minutes)")
    parser.add_argument("--only", default="", help="comma-separated scenarios: "
                        + ", ".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "fault",
                        help="where report.md and the PNGs go (default docs/fault)")
    args = parser.parse_args(argv)
    profile = args.profile or "long"
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(SCENARIOS)}")
    given = shlex.join(argv if argv is not None else sys.argv[1:])
    command = ("scripts/fault-report.sh " if os.environ.get("MAILWARDEN_FAULT_SCRIPT")
               else ".venv/bin/python -m tests.fault.report ") + given
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.monotonic()
    print(f"fault report: profile {profile}, scenarios {', '.join(chosen)}; load average "
          f"{load_average()}", flush=True)
    try:
        env = FaultEnv(PROFILES[profile])
    except CorpusMissing as exc:
        print(f"fault report: {exc}", file=sys.stderr)
        return 2
    results: list[ScenarioResult] = []
    errors: dict[str, str] = {}
    try:
        for name in chosen:
            print(f"\n-- {name} ...", flush=True)
            try:
                result = SCENARIOS[name](env)
            except Exception:  # a scenario that could not run is reported, not hidden
                errors[name] = traceback.format_exc()
                print(errors[name], file=sys.stderr, flush=True)
                continue
            results.append(result)
            print(result.text(), flush=True)
    finally:
        env.close()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    images: list[Path] = []
    by_key = {r.key: r for r in results}
    try:
        from tests.fault.plot import surge_png, timeline_png

        timeline = timeline_png(by_key, out / "timeline.png")
        if timeline:
            images.append(timeline)
        if "surge" in by_key:
            surge = surge_png(by_key["surge"], out / "surge.png")
            if surge:
                images.append(surge)
    except ImportError:
        print("fault report: matplotlib is missing, no PNGs (pip install -e '.[bench]')",
              file=sys.stderr)
    report = out / "report.md"
    report.write_text(markdown(results, errors, profile=profile, command=command,
                               started=started, seconds=time.monotonic() - clock,
                               images=images, out=out))
    failed = [r.key for r in results if not r.ok] + list(errors)
    print(f"\nwrote {report}" + "".join(f", {i}" for i in images))
    print("all scenarios passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
