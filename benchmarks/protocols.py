"""Mailwarden's mail-server protocols against gRPC, and end to end through a real Postfix
with Mailwarden's milter, Rspamd's milter (its proxy worker) and SpamAssassin
(spamass-milter): same messages, same machine, one run.

    .venv/bin/python -m benchmarks.protocols [options]   (scripts/bench.sh --protocols)

1. Mailwarden (`mailwarden train` on the train split, `mailwarden serve` with all three
   protocol ports): a closed-loop level of C sessions over gRPC Classify, the spamd
   protocol (a connection per message, as spamc), Rspamd's /checkv2 (kept-alive HTTP) and
   milter (a connection per session, options as Postfix negotiates them).
2. End to end: a Postfix instance (testkit.mta: its own config and queue, loopback) whose
   smtpd_milters is the system under test; C SMTP sessions send the test messages to one
   mailbox (virtual delivery to a maildir). Latency is the SMTP transaction (MAIL to the
   reply after DATA); CPU counts the filter's processes and Postfix's. A Postfix without
   any milter gives the MTA's own cost. Rspamd and SpamAssassin are set up as in the
   side-by-side benchmark (benchmarks/systems: stock rules, network checks off, Bayes
   trained on the same train split), Rspamd with a `rspamd_proxy` worker in milter mode,
   SpamAssassin behind spamass-milter (Debian's package; it runs spamc per message).

Figures go to docs/benchmarks/protocols.md and protocols.json (--out); nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import loadgen, machine, messages
from benchmarks.clients.milter import MilterClient
from benchmarks.clients.rspamd import RspamdClient
from benchmarks.clients.smtp import SmtpClient
from benchmarks.clients.spamd import SpamdClient
from benchmarks.dns_sink import DnsSink
from benchmarks.run import DEFAULT_HS_CACHE, DEFAULT_SPLIT, subset_split
from benchmarks.servers import ServerSet, free_port
from benchmarks.systems.mailwarden import Mailwarden
from mailwarden_local.corpus import DEFAULT_CORPUS
from testkit.mta import Postfix, postfix_version

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "benchmarks"
SYSTEMS = ("mailwarden", "rspamd", "spamassassin")
# The benchmark measures the filter, not Postfix's flow control: with the default 1 s
# in_flow_delay, smtpd slows down whenever delivery lags behind arrival.
POSTFIX_EXTRA = "in_flow_delay = 0s\n"


def progress(line: str) -> None:
    print(f"[protocols {time.strftime('%H:%M:%S')}] {line}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.protocols", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help="end-to-end systems behind Postfix (default: all three)")
    p.add_argument("--concurrency", type=int, default=8, help="sessions at once (8)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (2)")
    p.add_argument("--workers", type=int, default=machine.usable_cores(),
                   help="worker processes of each filter (cores)")
    p.add_argument("--limit", type=int, default=0, help="test messages (0: all)")
    p.add_argument("--train-limit", type=int, default=0,
                   help="train on this many ham and spam (0: the whole train split)")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--split", type=Path, default=DEFAULT_SPLIT)
    p.add_argument("--hs-cache", type=Path, default=DEFAULT_HS_CACHE)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--keep-work", action="store_true")
    return p


def level(client, test, args, roots) -> dict:
    result = asyncio.run(loadgen.run_level(client, test, args.concurrency, roots=roots,
                                           warmup=args.warmup, duration=args.duration))
    row = asdict(result)
    progress(f"  {client.name}: {result.throughput:7.1f} msg/s  p50 {result.p50_ms:6.1f} ms"
             f"  p99 {result.p99_ms:6.1f} ms  CPU {result.cpu_s_per_1000:5.2f} s/1000  "
             f"n={result.completed}" + (f"  errors {result.errors}: {result.first_error}"
                                        if result.errors else ""))
    return row


def through_postfix(name: str, milter: str, test, args, roots: list[int]) -> dict:
    postfix = Postfix(milter=milter, extra_config=POSTFIX_EXTRA)
    try:
        postfix.start()
        assert postfix.master is not None
        row = level(SmtpClient(name, postfix.port), test, args, roots + [postfix.master.pid])
        row["system"] = name
        return row
    finally:
        postfix.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    started = dt.datetime.now(dt.timezone.utc)
    split = messages.prepare_split(args.corpus, args.split)
    work = Path(tempfile.mkdtemp(prefix="mailwarden-protocols-bench-"))
    work.chmod(0o755)
    if args.train_limit:
        split = subset_split(split, work / "split", args.train_limit)
    test = messages.load(split, "test", limit=args.limit or None)
    progress(f"{len(test)} test messages; C={args.concurrency}, {args.duration:g} s per row; "
             f"work in {work}")
    out: dict = {"started": started.isoformat(timespec="seconds"),
                 "command": "scripts/bench.sh --protocols "
                 + " ".join(sys.argv[1:] if argv is None else argv),
                 "machine": asdict(machine.describe()), "load_before": machine.load_average(),
                 "settings": {k: str(v) for k, v in vars(args).items()},
                 "messages": len(test), "protocols": [], "postfix": [], "versions": {}}
    out["versions"]["postfix"] = postfix_version()
    try:
        with ServerSet(progress) as servers, DnsSink() as dns:
            mw = Mailwarden(work / "mailwarden", servers, workers=args.workers,
                            max_concurrency=args.concurrency, progress=progress)
            progress("Mailwarden: training")
            mw.train(split)
            mw.start(extra_args=("--milter-port", "0", "--spamd-port", "0",
                                 "--rspamd-port", "0"))
            ports = mw.ports
            progress("Mailwarden over each protocol (same server, same messages)")
            for label, client in (("gRPC Classify", mw.client()),
                                  ("spamd protocol", SpamdClient(ports["spamd_port"])),
                                  ("Rspamd /checkv2", RspamdClient(ports["rspamd_port"])),
                                  ("milter", MilterClient(ports["milter_port"]))):
                client.name = label
                row = level(client, test, args, mw.roots())
                row["protocol"] = label
                out["protocols"].append(row)
            progress("End to end through Postfix")
            out["postfix"].append(through_postfix("Postfix, no milter", "", test, args, []))
            if "mailwarden" in systems:
                out["postfix"].append(through_postfix(
                    "Postfix + Mailwarden milter", f"inet:127.0.0.1:{ports['milter_port']}",
                    test, args, mw.roots()))
            mw.stop()
            if "rspamd" in systems:
                from benchmarks.systems.rspamd import Rspamd

                rspamd = Rspamd(work / "rspamd", servers, workers=args.workers,
                                dns=dns.address, hs_cache=args.hs_cache, progress=progress,
                                milter_proxy=True)
                progress("Rspamd: starting (Hyperscan compile on a cold cache takes minutes)")
                rspamd.start()
                rspamd.train(split)
                out["versions"]["rspamd"] = rspamd.info().version
                out["postfix"].append(through_postfix(
                    "Postfix + Rspamd proxy (milter)", f"inet:127.0.0.1:{rspamd.proxy_port}",
                    test, args, rspamd.roots()))
                rspamd.stop()
            if "spamassassin" in systems and shutil.which("spamass-milter"):
                from benchmarks.systems.spamassassin import SpamAssassin

                sa = SpamAssassin(work / "spamassassin", servers, workers=args.workers,
                                  dns=dns.address, progress=progress)
                progress("SpamAssassin: training")
                sa.train(split)
                sa.start()
                out["versions"]["spamassassin"] = sa.info().version
                port = free_port()
                milter = servers.start(
                    "spamass-milter", ["spamass-milter", "-p", f"inet:{port}@127.0.0.1",
                                       "-m", "--", "-d", "127.0.0.1", "-p", str(sa.port)],
                    log=work / "spamass-milter.log")
                milter.wait_until(lambda: _listening(port), what="spamass-milter port",
                                  timeout=30)
                out["postfix"].append(through_postfix(
                    "Postfix + SpamAssassin (spamass-milter)", f"inet:127.0.0.1:{port}",
                    test, args, sa.roots() + [milter.pid]))
                out["versions"]["spamass-milter"] = _spamass_version()
                servers.stop(milter)
                sa.stop()
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    out["load_after"] = machine.load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "protocols.json").write_text(json.dumps(out, indent=2) + "\n")
    (args.out / "protocols.md").write_text(report(out))
    progress(f"wrote {args.out / 'protocols.md'}")
    return 0


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _spamass_version() -> str:
    out = subprocess.run(["spamass-milter"], capture_output=True, text=True)
    return next((line for line in (out.stdout + out.stderr).splitlines()
                 if "Version" in line), "?").strip()


def report(out: dict) -> str:
    m = out["machine"]
    lines = [
        "# Mail-server protocols and Postfix end to end",
        "",
        f"Generated by `{out['command']}` on {out['started']} "
        f"({m.get('cpu_model', '?')}, {m.get('cores', '?')} cores; load average before "
        f"{out['load_before']}, after {out['load_after']}). "
        f"{out['messages']} test messages of the SpamAssassin public corpus; closed loop, "
        f"C = {out['settings']['concurrency']} sessions, {out['settings']['duration']} s "
        "measured per row after a warm-up. How it is run: benchmarks/protocols.py.",
        "",
        "## Mailwarden over each protocol",
        "",
        "| protocol | msg/s | p50 ms | p99 ms | server CPU s / 1000 msg | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in out["protocols"]:
        lines.append(f"| {row['protocol']} | {row['throughput']:.1f} | {row['p50_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} | {row['cpu_s_per_1000']:.2f} | {row['errors']} |")
    lines += ["", "## End to end through Postfix " + out["versions"].get("postfix", ""), "",
              "| system | msg/s | p50 ms | p99 ms | CPU s / 1000 msg (filter + Postfix) | "
              "errors |", "|---|---:|---:|---:|---:|---:|"]
    for row in out["postfix"]:
        lines.append(f"| {row['system']} | {row['throughput']:.1f} | {row['p50_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} | {row['cpu_s_per_1000']:.2f} | {row['errors']}"
                     + (f" ({row['first_error'][:80]})" if row["errors"] else "") + " |")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()),
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
