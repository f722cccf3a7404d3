"""Mailwarden vs SpamAssassin (spamd) vs Rspamd, side by side, in one run.

    scripts/bench.sh [options]            # bootstrap --bench, then this module
    .venv/bin/python -m benchmarks.run [options]

One run: split the corpus (mailwarden_local.corpus.split_corpus), train all three systems on the
train split (in parallel), then measure one system at a time on the test split — an
accuracy pass (every test message once) and a closed-loop concurrency sweep — then
Mailwarden's rule-count scaling; write docs/benchmarks/results.md, results.json and
throughput_vs_p99.png. Every server runs from a temp dir on loopback ephemeral ports and
is stopped at the end, on error, on Ctrl-C and on SIGTERM. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from benchmarks import loadgen, machine, messages, report, rulegen
from testkit import procfs
from benchmarks.dns_sink import DnsSink
from benchmarks.servers import ServerFailed, ServerSet
from mailwarden_local.corpus import DEFAULT_CORPUS, Split, split_corpus

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "benchmarks"
DEFAULT_SPLIT = REPO / ".cache" / "split"
DEFAULT_HS_CACHE = REPO / ".cache" / "bench" / "rspamd-hyperscan"
SYSTEMS = ("mailwarden", "spamassassin", "rspamd")
PEER_BINARIES = {"spamassassin": ("spamd", "sa-learn"),
                 "rspamd": ("rspamd", "rspamc", "rspamadm", "redis-server")}


def progress(line: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", flush=True)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _systems(text: str) -> list[str]:
    names = [v.strip().lower() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"systems are {', '.join(SYSTEMS)}; got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    cores = machine.usable_cores()
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Mailwarden vs SpamAssassin vs Rspamd on the same messages, same machine, "
        "one run. Figures are printed and written to --out; nothing is asserted.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--systems", type=_systems, default=list(SYSTEMS),
                   help="comma-separated subset of " + ",".join(SYSTEMS))
    p.add_argument("--concurrency", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64],
                   help="closed-loop concurrency levels of the sweep")
    p.add_argument("--duration", type=float, default=15.0,
                   help="measured seconds per concurrency level")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="unmeasured seconds before each level's window")
    p.add_argument("--rule-counts", type=_int_list, default=[10, 100, 1000, 5000],
                   help="Mailwarden rule-count scaling (generated rule sets)")
    p.add_argument("--no-scaling", action="store_true", help="skip rule-count scaling")
    p.add_argument("--scaling-concurrency", type=int, default=0,
                   help="concurrency for the scaling runs (0: Mailwarden's best-throughput "
                   "level from the sweep)")
    p.add_argument("--workers", type=int, default=cores,
                   help="worker processes per system (spamd children, Rspamd normal "
                   "workers, mailwarden serve --workers)")
    p.add_argument("--limit", type=int, default=0,
                   help="use only this many test messages (0: the whole test split)")
    p.add_argument("--train-limit", type=int, default=0,
                   help="train on only this many ham and this many spam messages (0: the "
                   "whole train split)")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                   help="the unpacked SpamAssassin corpus (scripts/bootstrap.sh fetches it)")
    p.add_argument("--split", type=Path, default=DEFAULT_SPLIT,
                   help="where the deterministic train/test split is laid out")
    p.add_argument("--out", type=Path, default=None,
                   help=f"where results.md, results.json and the chart go (default "
                   f"{DEFAULT_OUT.relative_to(REPO)}; with --smoke: <work>/results)")
    p.add_argument("--work", type=Path, default=None,
                   help="working directory for configs, databases and logs (default: a "
                   "new temp dir, removed afterwards unless --keep-work)")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the working directory (server logs) afterwards")
    p.add_argument("--hs-cache", type=Path, default=DEFAULT_HS_CACHE,
                   help="Rspamd's Hyperscan cache (kept between runs: only start-up time)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the py-spy profile of Mailwarden (one extra, unmeasured level "
                   "at its best concurrency; needs py-spy from the bench extra)")
    p.add_argument("--note", default="",
                   help="a line shown at the top of results.md (e.g. what else ran)")
    p.add_argument("--smoke", action="store_true",
                   help="CI smoke run: Mailwarden only, 300 messages, trained on 300+300, "
                   "two short levels, 10 and 100 rules (explicit options still win)")
    return p


SMOKE = {"systems": ["mailwarden"], "limit": 300, "train_limit": 300, "concurrency": [1, 4],
         "duration": 1.5, "warmup": 0.5, "rule_counts": [10, 100], "profile": False}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        explicit = {a.split("=")[0] for a in argv if a.startswith("--")}
        for key, value in SMOKE.items():
            flag = "--no-profile" if key == "profile" else "--" + key.replace("_", "-")
            if flag not in explicit:
                setattr(args, key, value)
    if args.workers <= 0:
        parser.error("--workers must be positive")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    return args


# --- results ---------------------------------------------------------------------------
@dataclass
class SystemResult:
    name: str
    version: str = ""
    workers: int = 0
    config: list[str] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    start_seconds: float = 0.0
    accuracy: dict[str, Any] = field(default_factory=dict)
    levels: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    peak_pss_mib: float = 0.0
    processes: int = 0
    dns_queries: int = 0
    error: str = ""

    def best(self) -> dict[str, Any] | None:
        return report.best_level({"levels": self.levels})


@dataclass
class Results:
    started: str
    command: str
    machine: dict[str, Any]
    load_before: str
    settings: dict[str, Any]
    systems: list[SystemResult] = field(default_factory=list)
    scaling: dict[str, Any] = field(default_factory=dict)
    finished: str = ""
    load_after: str = ""
    leftovers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    note: str = ""
    profile: dict[str, Any] = field(default_factory=dict)


def command_line(argv: list[str]) -> str:
    head = os.environ.get("MAILWARDEN_BENCH_COMMAND") or ".venv/bin/python -m benchmarks.run"
    return " ".join([head, *map(shlex.quote, argv)])


# --- the run ---------------------------------------------------------------------------
def subset_split(split: Split, root: Path, train_limit: int) -> Split:
    """A split whose train part holds `train_limit` ham and spam (a fixed, mixed subset:
    first by sha256 of the name); the test part is the full test split."""
    for part in ("train", "test"):
        for label in ("ham", "spam"):
            out = root / part / label
            out.mkdir(parents=True, exist_ok=True)
            files = split.files(part, label)
            if part == "train":
                files = sorted(files, key=lambda p: hashlib.sha256(p.name.encode()).digest())
                files = files[:train_limit]
            for path in files:
                link = out / path.name
                if not link.exists():
                    os.symlink(path.resolve(), link)
    return Split(root)


def check_prerequisites(systems: list[str]) -> list[str]:
    problems = []
    for name in systems:
        missing = [b for b in PEER_BINARIES.get(name, ()) if shutil.which(b) is None]
        if missing:
            problems.append(f"{name}: {', '.join(missing)} not installed — run "
                            "scripts/bootstrap.sh --bench (Debian packages spamassassin spamd "
                            "spamc rspamd redis-server)")
    if "mailwarden" in systems:
        from benchmarks.systems.mailwarden import server_available
        if not server_available():
            problems.append("mailwarden: this checkout has no filter server "
                            "(filter_server/server); `mailwarden serve` cannot run")
    return problems


def measure(system, client, test: list[messages.Message], args: argparse.Namespace,
            result: SystemResult, dns: DnsSink) -> None:
    """Accuracy pass, then the concurrency sweep, with memory sampled throughout."""
    roots = system.roots()
    dns_before = dns.snapshot()
    if hasattr(client, "preencode"):
        client.preencode(test)
    with procfs.MemorySampler(roots) as sampler:
        progress(f"{result.name}: accuracy pass over {len(test)} test messages")
        accuracy = asyncio.run(loadgen.accuracy_pass(
            client, test, max(1, 2 * args.workers), progress))
        result.accuracy = {
            "ham": accuracy.ham, "spam": accuracy.spam, "ham_flagged": accuracy.ham_flagged,
            "spam_flagged": accuracy.spam_flagged, "errors": accuracy.errors,
            "first_error": accuracy.first_error,
            "false_positive_rate": accuracy.false_positive_rate,
            "spam_recall": accuracy.spam_recall, "seconds": accuracy.seconds,
            "verdicts": accuracy.verdict_labels}
        progress(f"{result.name}: ham false positives {accuracy.ham_flagged}/{accuracy.ham}"
                 f", spam caught {accuracy.spam_flagged}/{accuracy.spam}, errors "
                 f"{accuracy.errors} ({accuracy.seconds:.1f}s)")
        offset = 0
        for concurrency in args.concurrency:
            level = asyncio.run(loadgen.run_level(
                client, test, concurrency, roots=roots, warmup=args.warmup,
                duration=args.duration, start_offset=offset))
            offset += 7919  # start each level elsewhere in the test split
            result.levels.append(asdict(level))
            progress(f"{result.name}: C={concurrency:<3} {level.throughput:8.1f} msg/s  "
                     f"p50 {level.p50_ms:7.1f} ms  p99 {level.p99_ms:7.1f} ms  "
                     f"CPU {level.cpu_s_per_1000:6.2f} s/1000  n={level.completed}"
                     + (f"  errors {level.errors}: {level.first_error}"
                        if level.errors else ""))
    result.peak_rss_mib = round(sampler.peak.rss_kib / 1024, 1)
    result.peak_pss_mib = round(sampler.peak.pss_kib / 1024, 1)
    result.processes = sampler.peak.processes
    result.dns_queries = dns.snapshot() - dns_before


def profile_mailwarden(mw, servers: ServerSet, test, args, concurrency: int,
                       results: Results) -> None:
    """py-spy on every Mailwarden server process during one extra, unmeasured level."""
    from benchmarks import profile

    raw, log = args.work / "mailwarden" / "py-spy.raw", args.work / "mailwarden" / "py-spy.log"
    progress(f"Mailwarden: profiling with py-spy for {args.duration:g}s at C={concurrency}")
    try:
        spy = profile.start(servers, mw.server.pid, args.duration, raw, log)
        client = mw.client()
        client.preencode(test)
        asyncio.run(loadgen.run_level(client, test, concurrency, roots=mw.roots(),
                                      warmup=1.0, duration=args.duration))
        profile.finish(servers, spy, raw)
        results.profile = {"concurrency": concurrency, **profile.summarize(raw)}
    except (FileNotFoundError, RuntimeError, OSError, ServerFailed) as exc:
        results.profile = {"skipped": str(exc)}
        progress(f"Mailwarden: profile skipped: {exc}")


def run_scaling(mw, test, args, mined, best_concurrency: int, results: Results) -> None:
    from benchmarks.systems.mailwarden import example_policy

    concurrency = args.scaling_concurrency or best_concurrency
    rows = []
    results.scaling = {"concurrency": concurrency, "rows": rows, "workers": args.workers}
    base = example_policy()
    for n in args.rule_counts:
        rules = rulegen.generate(mined, n)
        # mw.start validates it (filter_server.policy.validate) before serving
        policy = rulegen.scaled_policy(base, rules)
        progress(f"Mailwarden: {n} rules — starting")
        mw.start(policy, tag=f"rules-{n}")
        try:
            client = mw.client()
            client.preencode(test)
            with procfs.MemorySampler(mw.roots()) as sampler:
                level = asyncio.run(loadgen.run_level(
                    client, test, concurrency, roots=mw.roots(), warmup=args.warmup,
                    duration=args.duration))
        finally:
            mw.stop()
        rows.append({"rules": n, "start_seconds": mw.start_seconds,
                     "peak_pss_mib": round(sampler.peak.pss_kib / 1024, 1),
                     "level": asdict(level)})
        progress(f"Mailwarden: {n:>5} rules  {level.throughput:8.1f} msg/s  CPU "
                 f"{level.cpu_s_per_1000:6.2f} s/1000  p99 {level.p99_ms:6.1f} ms  hits/msg "
                 f"{level.mean_hits:.1f}  (start {mw.start_seconds:.1f}s)")


def run(args: argparse.Namespace, argv: list[str]) -> Results:
    from benchmarks.systems.mailwarden import Mailwarden
    from benchmarks.systems.rspamd import Rspamd
    from benchmarks.systems.spamassassin import SpamAssassin

    results = Results(
        started=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=command_line(argv), machine=asdict(machine.describe()),
        load_before=machine.load_average(), settings={}, note=args.note)
    progress(f"machine: {results.machine['cores']} cores, {results.machine['memory_gib']} "
             f"GiB; load average {results.load_before}")
    split = split_corpus(args.corpus, args.split)
    work = args.work
    with ServerSet(progress) as servers, DnsSink() as dns:
        if args.train_limit:
            split = subset_split(split, work / "split-subset", args.train_limit)
        test = messages.load(split, "test", limit=args.limit or None)
        train_counts = {label: len(split.files("train", label)) for label in ("ham", "spam")}
        results.settings = {
            "systems": args.systems, "concurrency": args.concurrency,
            "duration": args.duration, "warmup": args.warmup, "workers": args.workers,
            "test_messages": len(test), "test_ham": sum(not m.is_spam for m in test),
            "test_spam": sum(m.is_spam for m in test), "train": train_counts,
            "rule_counts": [] if args.no_scaling else args.rule_counts,
            "accuracy_concurrency": max(1, 2 * args.workers)}
        progress(f"test split: {len(test)} messages; train split: {train_counts['ham']} ham, "
                 f"{train_counts['spam']} spam")
        levels_max = max(*args.concurrency, args.scaling_concurrency)
        systems: dict[str, Any] = {}
        if "rspamd" in args.systems:
            systems["rspamd"] = Rspamd(work / "rspamd", servers, workers=args.workers,
                                       dns=dns.address, hs_cache=args.hs_cache,
                                       progress=progress)
        if "spamassassin" in args.systems:
            systems["spamassassin"] = SpamAssassin(work / "spamassassin", servers,
                                                   workers=args.workers, dns=dns.address,
                                                   progress=progress)
        if "mailwarden" in args.systems:
            systems["mailwarden"] = Mailwarden(work / "mailwarden", servers,
                                               workers=args.workers,
                                               max_concurrency=levels_max, dns=dns.address,
                                               progress=progress)
        by_name = {key: SystemResult(name=s.name, workers=args.workers)
                   for key, s in systems.items()}
        results.systems = [by_name[k] for k in SYSTEMS if k in by_name]

        # Training in parallel: nothing is measured yet. Rspamd learns over HTTP, so its
        # server starts here; spamd and Mailwarden start later, one system at a time.
        progress("training every system on the train split (in parallel)")
        jobs: dict[str, Callable[[], None]] = {}
        if "rspamd" in systems:
            jobs["rspamd"] = lambda: (systems["rspamd"].start(),
                                      systems["rspamd"].train(split))
        if "spamassassin" in systems:
            jobs["spamassassin"] = lambda: systems["spamassassin"].train(split)
        if "mailwarden" in systems:
            jobs["mailwarden"] = lambda: systems["mailwarden"].train(split)
        mined: list[rulegen.Mined] = []
        if "mailwarden" in systems and not args.no_scaling:
            jobs["rule mining"] = lambda: mined.append(rulegen.mine(split, progress))
        pool = ThreadPoolExecutor(max_workers=len(jobs) or 1, thread_name_prefix="train")
        try:
            futures: dict[str, Future] = {k: pool.submit(job) for k, job in jobs.items()}
            for key, future in futures.items():
                try:
                    future.result()
                except (ServerFailed, OSError, ValueError) as exc:
                    message = f"{key}: {exc}"
                    results.errors.append(message)
                    progress(f"FAILED {message}")
                    if key in by_name:
                        by_name[key].error = str(exc)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        for key, system in systems.items():
            by_name[key].training = asdict(system.trained)
            info = system.info()
            by_name[key].version, by_name[key].config = info.version, info.config

        for key in ("rspamd", "spamassassin", "mailwarden"):
            if key not in systems or by_name[key].error:
                continue
            system, result = systems[key], by_name[key]
            try:
                if key != "rspamd":  # Rspamd has been running since training
                    system.start()
                result.start_seconds = system.start_seconds
                progress(f"{result.name}: measuring ({args.workers} workers)")
                measure(system, system.client(), test, args, result, dns)
                best = result.best()
                if key == "mailwarden" and args.profile and best:
                    profile_mailwarden(system, servers, test, args, best["concurrency"],
                                       results)
            except (ServerFailed, OSError) as exc:
                result.error = str(exc)
                results.errors.append(f"{key}: {exc}")
                progress(f"FAILED {key}: {exc}")
            finally:
                system.stop()

        if "mailwarden" in systems and mined and not by_name["mailwarden"].error:
            best = by_name["mailwarden"].best()
            try:
                run_scaling(systems["mailwarden"], test, args, mined[0],
                            best["concurrency"] if best else 4 * args.workers, results)
            except (ServerFailed, OSError, ValueError) as exc:
                results.errors.append(f"rule-count scaling: {exc}")
                progress(f"FAILED rule-count scaling: {exc}")
    results.leftovers = servers.leftovers
    results.finished = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results.load_after = machine.load_average()
    return results


def write_outputs(results: Results, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = asdict(results)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    written = [out / "results.json", report.write_markdown(data, out / "results.md")]
    try:
        from benchmarks import chart
    except ImportError as exc:  # matplotlib is the `bench` extra; CI's smoke run lacks it
        progress(f"chart skipped: {exc} (pip install -e '.[bench]')")
    else:
        written.append(chart.write_png(data, out / "throughput_vs_p99.png"))
    return written


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    problems = check_prerequisites(args.systems)
    if problems:
        for problem in problems:
            print(f"benchmarks.run: {problem}", file=sys.stderr)
        return 2
    # SIGTERM takes the same path as Ctrl-C: the ServerSet stops every server on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    created = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="mailwarden-bench-")) if created else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    args.work.chmod(0o755)  # the peers run as their own users and must reach their dirs
    out = args.out or (args.work / "results" if args.smoke else DEFAULT_OUT)
    status = 0
    try:
        results = run(args, argv)
        for path in write_outputs(results, out):
            progress(f"wrote {path}")
        if results.errors or results.leftovers:
            for line in results.errors + results.leftovers:
                print(f"benchmarks.run: {line}", file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        print("benchmarks.run: interrupted; every server was stopped", file=sys.stderr)
        status = 130
    except FileNotFoundError as exc:
        print(f"benchmarks.run: {exc}", file=sys.stderr)
        status = 2
    except Exception:  # noqa: BLE001 - say where, keep the work dir for the logs
        traceback.print_exc()
        print(f"benchmarks.run: failed; logs kept in {args.work}", file=sys.stderr)
        return 1
    if created and not args.keep_work:
        shutil.rmtree(args.work, ignore_errors=True)
    elif status == 0:
        progress(f"logs and configs kept in {args.work}")
    return status


if __name__ == "__main__":
    exit_status = main()
    if exit_status == 130:
        # An interrupted grpc.aio load generator can leave gRPC core threads whose teardown
        # races the interpreter's own (seen under load: glibc "corrupted double-linked list",
        # SIGABRT instead of 130). Every server is stopped and the message printed by now, so
        # leave without the interpreter's teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_status)
    sys.exit(exit_status)
