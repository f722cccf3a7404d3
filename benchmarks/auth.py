"""Sender authentication side by side: Mailwarden, Rspamd and SpamAssassin checking SPF,
DKIM and DMARC (and ARC, where they can) against the same DNS zones, on the same messages.

    .venv/bin/python -m benchmarks.auth [--domains 400] [--concurrency 4] [--systems ...]

One Knot server (testkit.dns) serves a root zone with, for every sender domain, an SPF
record (through a shared provider include, as most domains publish), a DMARC record
(p=reject) and, for the domains that sign, a DKIM key. Half the messages are legitimate
(DKIM-signed, sent from an address SPF allows), half forged (unsigned, from an address SPF
refuses); every message has its own domain, so the first pass over them finds nothing in
any cache (cold) and the second pass finds everything there (warm: what a system's own
cache saves; Rspamd and SpamAssassin keep none of their own and ask the server again).

SpamAssassin runs without its DMARC plugin: that plugin resolves through Mail::DMARC's own
resolver (/etc/resolv.conf), which cannot be pointed at the benchmark's server, and a
benchmark sends no query off the machine.

Every system gets the same envelope: Mailwarden in the request (client IP, HELO, MAIL
FROM), Rspamd in its `IP`, `Helo` and `From` request headers, SpamAssassin (which reads
the connection from the headers) in a `Received` header written as the receiving MTA
would, plus `Return-Path`. Measured per pass: server CPU per message (all processes of
the system), latency p50/p99 at the given concurrency, and how many messages each system
judged as the zones say (legitimate: DKIM and DMARC pass; forged: DMARC fail).
Mailwarden also runs with authentication off, for the cost of authentication itself.
Results: docs/benchmarks/auth-results.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dkim
import grpc
import yaml

from benchmarks import machine
from benchmarks.loadgen import percentile
from benchmarks.servers import ServerSet
from benchmarks.systems.rspamd import Rspamd
from benchmarks.systems.spamassassin import SpamAssassin
from mailwarden.filter.v1 import filter_pb2
from testkit import procfs
from testkit.dns import KnotServer, Zone, dkim_key

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "benchmarks"
CLIENT_IP = "192.0.2.10"
FORGER_IP = "198.51.100.66"
HELO = "mta.sender.test"
SYSTEMS = ("mailwarden", "mailwarden-noauth", "rspamd", "spamassassin")


def progress(line: str) -> None:
    print(f"[auth-bench {time.strftime('%H:%M:%S')}] {line}", flush=True)


@dataclass(frozen=True)
class AuthMessage:
    name: str
    legit: bool
    raw: bytes
    mail_from: str
    rcpt: str = "user@example.net"
    ip: str = CLIENT_IP
    helo: str = HELO


def build(domains: int) -> tuple[Zone, list[AuthMessage]]:
    zone = Zone()
    zone.txt("_spf.provider.test", "v=spf1 ip4:192.0.2.0/24 -all")
    zone.txt(HELO, f"v=spf1 ip4:{CLIENT_IP} -all")
    messages = []
    for i in range(domains):
        legit = i % 2 == 0
        domain = f"sender{i}.test"
        zone.txt(domain, "v=spf1 include:_spf.provider.test -all")
        zone.txt(f"_dmarc.{domain}", "v=DMARC1; p=reject")
        sender = f"news@{domain}"
        body = (f"Hello,\r\n\r\nthis is message {i} from {domain}.\r\nRegards\r\n")
        head = (f"From: News <{sender}>\r\nTo: user@example.net\r\n"
                f"Subject: Update {i}\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
                f"Message-ID: <{i}.bench@{domain}>\r\n")
        raw = (head + "\r\n" + body).encode()
        ip = CLIENT_IP if legit else FORGER_IP
        if legit:
            key = dkim_key("s1", domain)
            zone.txt(key.record_name, key.record)
            raw = dkim.sign(raw, b"s1", domain.encode(), key.private_pem,
                            include_headers=[b"from", b"to", b"subject", b"date",
                                             b"message-id"]) + raw
        received = (f"Return-Path: <{sender}>\r\nReceived: from {HELO} ({HELO} [{ip}])\r\n"
                    f"\tby mx.example.net with ESMTP id B{i}; "
                    f"Mon, 1 Jan 2024 10:00:01 +0000\r\n").encode()
        messages.append(AuthMessage(f"m{i}", legit, received + raw, sender, ip=ip))
    return zone, messages


# --- what each system is asked, and what it answers -------------------------------------
@dataclass
class Answer:
    symbols: set[str]
    score: float


class MailwardenAuth:
    name = "Mailwarden"

    def __init__(self, port: int) -> None:
        self.target = f"127.0.0.1:{port}"

    async def classify(self, channel: grpc.aio.Channel, m: AuthMessage) -> Answer:
        call = channel.unary_unary("/mailwarden.filter.v1.Filter/Classify",
                                   request_serializer=filter_pb2.ClassifyRequest.SerializeToString,
                                   response_deserializer=filter_pb2.ClassifyResponse.FromString)
        response = await call(filter_pb2.ClassifyRequest(
            request_id=m.name, message=m.raw,
            envelope=filter_pb2.Envelope(mail_from=m.mail_from, recipients=[m.rcpt],
                                         client_ip=m.ip, helo=m.helo)), timeout=60)
        return Answer({h.name for h in response.hits}, response.score)


async def rspamd_check(port: int, m: AuthMessage) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [b"POST /checkv2 HTTP/1.1", b"Host: localhost",
                b"Content-Length: %d" % len(m.raw), b"Connection: close",
                b"IP: " + m.ip.encode(), b"Helo: " + m.helo.encode(),
                b"From: " + m.mail_from.encode(), b"Rcpt: " + m.rcpt.encode()]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + m.raw)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    body = data.split(b"\r\n\r\n", 1)[1]
    if b"\r\ntransfer-encoding: chunked" in data.lower().split(b"\r\n\r\n")[0]:
        body = _dechunk(body)
    result = json.loads(body)
    return Answer(set(result.get("symbols") or {}), float(result.get("score", math.nan)))


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


async def spamd_symbols(port: int, m: AuthMessage) -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(m.raw))
                     + m.raw)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    score = re.search(rb"Spam: \w+ ; (-?[\d.]+)", head)
    return Answer({s.strip() for s in body.decode().split(",") if s.strip()},
                  float(score.group(1)) if score else math.nan)


# Did a system judge the message as its zone says? legitimate: DKIM valid and DMARC
# pass; forged: DMARC fail under p=reject.
JUDGED = {
    "Mailwarden": ({"DKIM_VALID", "DMARC_PASS"}, {"DMARC_REJECT"}),
    "Rspamd": ({"R_DKIM_ALLOW", "DMARC_POLICY_ALLOW"}, {"DMARC_POLICY_REJECT"}),
    # SpamAssassin's DMARC plugin resolves through Mail::DMARC's own resolver (the
    # system's /etc/resolv.conf, not SpamAssassin's dns_server), which would leave the
    # machine: it is not loaded here, and SpamAssassin is judged by SPF and DKIM.
    "SpamAssassin": ({"DKIM_VALID", "SPF_PASS"}, {"SPF_FAIL"}),
}


@dataclass
class PassResult:
    system: str
    cache: str
    messages: int
    errors: int
    cpu_ms_per_message: float
    p50_ms: float
    p99_ms: float
    judged_as_zones_say: int
    first_error: str = ""
    symbols_seen: list[str] = field(default_factory=list)


async def one_pass(system: str, ask, messages: list[AuthMessage], concurrency: int,
                   roots: list[int], cache: str) -> PassResult:
    todo = iter(messages)
    latencies: list[float] = []
    errors = 0
    first_error = ""
    judged = 0
    seen: set[str] = set()
    want_legit, want_forged = JUDGED.get(system, (set(), set()))

    async def worker() -> None:
        nonlocal errors, first_error, judged
        for m in todo:
            t0 = time.perf_counter()
            try:
                answer = await asyncio.wait_for(ask(m), 120)
            except Exception as exc:  # noqa: BLE001 - counted and shown
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            latencies.append(time.perf_counter() - t0)
            seen.update(s for s in answer.symbols
                        if re.match(r"^(R_)?(SPF|DKIM|DMARC|ARC)", s))
            wanted = want_legit if m.legit else want_forged
            judged += bool(wanted) and wanted <= answer.symbols

    cpu0 = procfs.cpu_seconds(roots)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = procfs.cpu_seconds(roots) - cpu0
    latencies.sort()
    done = len(latencies)
    return PassResult(system, cache, done, errors, cpu / done * 1e3 if done else math.nan,
                      percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3,
                      judged, first_error, sorted(seen))


# --- the systems --------------------------------------------------------------------------
def mailwarden_policy(dns: str, enabled: bool) -> dict[str, Any]:
    policy = yaml.safe_load((REPO / "examples" / "spampolicy.yaml").read_text())
    policy = policy["spec"]["policy"]
    policy.pop("model", None)
    policy["authentication"]["enabled"] = enabled
    policy["authentication"]["dns"] = {"servers": [dns], "timeoutSeconds": 2,
                                       "budgetSeconds": 4}
    if not enabled:
        policy["lists"]["allow"]["matchUnauthenticated"] = True
    return policy


def start_mailwarden(servers: ServerSet, work: Path, dns: str, enabled: bool,
                     workers: int) -> tuple[int, Any]:
    from mailwarden_local.projection import project
    policy_dir = work / "policy"
    project(policy_dir, {"policy.yaml": yaml.safe_dump(mailwarden_policy(dns, enabled))
                         .encode()})
    port_file = work / "ports.json"
    server = servers.start("mailwarden", [
        str(REPO / ".venv" / "bin" / "mailwarden"), "serve", "--policy-dir", str(policy_dir),
        "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--workers",
        str(workers), "--port-file", str(port_file), "--drain-seconds", "0"],
        log=work / "serve.log", port_file=port_file)
    ports = server.wait_ports(60)
    server.wait_healthy(f"127.0.0.1:{ports['grpc_port']}", timeout=60)
    return ports["grpc_port"], server


class RspamdAuth(Rspamd):
    """The benchmark's Rspamd with its spf, dkim, dmarc and arc modules on, resolving
    through the benchmark's Knot server."""

    def _write_config(self) -> Path:
        conf = super()._write_config()
        local = self.work / "etc" / "local.d"
        for module in ("spf", "dkim", "dmarc", "arc"):
            (local / f"{module}.conf").unlink(missing_ok=True)
        # the resolver: Knot, with timeouts like Mailwarden's here
        (local / "options.inc").write_text(
            (local / "options.inc").read_text().replace("timeout = 0.5s;", "timeout = 2s;"))
        return conf


class SpamAssassinAuth(SpamAssassin):
    """spamd with DNS on, pointed at Knot, for its SPF and DKIM plugins (no DMARC: see
    JUDGED; no RBLs, no Razor/Pyzor/DCC, no Bayes): `trusted_networks` makes the Received
    header our MTA wrote the connection SPF checks."""

    def _write_config(self) -> None:
        super()._write_config()
        for pre in self.etc.glob("*.pre"):  # see JUDGED: no DMARC plugin
            pre.write_text(pre.read_text().replace(
                "loadplugin Mail::SpamAssassin::Plugin::DMARC",
                "# loadplugin Mail::SpamAssassin::Plugin::DMARC (benchmarks/auth.py)"))
        host, port = self.dns.rsplit(":", 1)
        (self.etc / "zz_benchmark.cf").write_text(
            "use_bayes 0\ndns_available yes\nskip_rbl_checks 1\n"
            f"dns_server [{host}]:{port}\n"
            "trusted_networks 127.0.0.0/8\ninternal_networks 127.0.0.0/8\n"
            "use_razor2 0\nuse_pyzor 0\nuse_dcc 0\n")

    def start(self) -> None:
        self._write_config()
        argv = ["spamd", "-x", f"--listen=127.0.0.1:{self.port}", "-A", "127.0.0.1",
                f"--siteconfigpath={self.etc}", f"--max-children={self.workers}",
                f"--min-children={self.workers}", "--min-spare=1",
                f"--max-spare={self.workers}", "--syslog=stderr",
                f"--pidfile={self.work / 'spamd.pid'}",
                f"--helper-home-dir={self.work / 'home'}"]
        self.spamd = self.servers.start("spamd", argv, log=self.work / "spamd.out",
                                        user=self.user, env=self._env(), cwd=self.work)
        self.spamd.wait_until(self._pong, what="PONG", timeout=300, interval=0.25)
        self.spamd.wait_until(lambda: self._children() >= self.workers,
                              what=f"{self.workers} children", timeout=120, interval=0.25)


async def run_system(system: str, messages: list[AuthMessage], concurrency: int,
                     servers: ServerSet, work: Path, dns: str, workers: int,
                     hs_cache: Path) -> list[PassResult]:
    work.mkdir(parents=True, exist_ok=True)
    results = []
    if system.startswith("mailwarden"):
        enabled = system == "mailwarden"
        port, server = start_mailwarden(servers, work, dns, enabled, workers)
        roots = [server.pid]
        label = "Mailwarden" if enabled else "Mailwarden (authentication off)"
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                              options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(concurrency)]
        client = MailwardenAuth(port)
        turn = iter(range(10**9))

        async def ask(m: AuthMessage) -> Answer:
            return await client.classify(channels[next(turn) % len(channels)], m)
        for cache in ("cold", "warm"):
            result = await one_pass("Mailwarden", ask, messages, concurrency, roots, cache)
            result.system = label
            results.append(result)
        for channel in channels:
            await channel.close()
        servers.stop(server)
        return results
    if system == "rspamd":
        peer = RspamdAuth(work, servers, workers=workers, dns=dns, hs_cache=hs_cache,
                          progress=progress)
        peer.start()

        async def ask(m: AuthMessage) -> Answer:
            return await rspamd_check(peer.port, m)
    else:
        peer = SpamAssassinAuth(work, servers, workers=workers, dns=dns, progress=progress)
        peer.start()

        async def ask(m: AuthMessage) -> Answer:
            return await spamd_symbols(peer.port, m)
    name = peer.name
    for cache in ("cold", "warm"):
        results.append(await one_pass(name, ask, messages, concurrency, peer.roots(),
                                      cache))
    peer.stop()
    return results


def table(results: list[PassResult]) -> str:
    lines = ["| System | Cache | Messages | Errors | Server CPU per message | p50 | p99 | "
             "Judged as the zones say |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.system} | {r.cache} | {r.messages} | {r.errors} | "
                     f"{r.cpu_ms_per_message:.2f} ms | {r.p50_ms:.1f} ms | {r.p99_ms:.1f} ms | "
                     f"{r.judged_as_zones_say}/{r.messages} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", type=int, default=400)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--hs-cache", type=Path, default=REPO / ".cache" / "bench" /
                   "rspamd-hyperscan")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    progress(f"{args.domains} sender domains: zones and signed messages")
    zone, messages = build(args.domains)
    work = Path(tempfile.mkdtemp(prefix="mailwarden-auth-bench-"))
    work.chmod(0o755)  # the peers run as their own users and must reach their dirs
    results: list[PassResult] = []
    try:
        with ServerSet(progress) as servers, KnotServer(work / "knot", zone) as knot:
            for system in systems:
                progress(f"{system}: cold pass, then warm pass ({len(messages)} messages, "
                         f"concurrency {args.concurrency})")
                found = asyncio.run(run_system(system, messages, args.concurrency, servers,
                                               work / system, knot.address, args.workers,
                                               args.hs_cache))
                for r in found:
                    progress(f"  {r.system} {r.cache}: {r.cpu_ms_per_message:.2f} ms CPU/msg, "
                             f"p99 {r.p99_ms:.1f} ms, {r.errors} errors, judged "
                             f"{r.judged_as_zones_say}/{r.messages} {r.first_error}")
                results += found
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = table(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.auth " + " ".join(argv)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    (args.out / "auth-results.json").write_text(json.dumps(
        {"command": command.strip(), "machine": machine.describe() if hasattr(
            machine, "describe") else {}, "domains": args.domains,
         "concurrency": args.concurrency, "results": [asdict(r) for r in results]},
        indent=2, default=str))
    (args.out / "auth-results.md").write_text(
        f"# Sender authentication side by side\n\n`{command.strip()}` on "
        f"{os.cpu_count()} cores, {args.domains} sender domains (each message its own), "
        f"concurrency {args.concurrency}, load average at the end {load} (the machine is "
        f"shared: latencies are noisy, CPU per message less so). See benchmarks/auth.py "
        f"for the set-up.\n\n"
        + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
