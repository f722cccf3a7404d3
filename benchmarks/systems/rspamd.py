"""Rspamd (Debian package) with its own Redis for Bayes, in a temp dir, on loopback.

Configuration (the stock /etc/rspamd rules and scores, plus these local overrides):
- our own top-level rspamd.conf that includes the stock `common.conf` (all modules, rules,
  scores, actions) and defines only two workers: `normal` with count = workers on
  127.0.0.1:<port>, and one `controller` (for learning) on 127.0.0.1:<port>; no proxy (but
  for benchmarks/protocols.py's milter row: a `rspamd_proxy` worker in milter mode), no
  fuzzy storage; DBDIR/RUNDIR/LOGDIR point into the temp dir (`--var`); logging at
  `notice` (one summary line per message);
- Bayes: the stock classifier on a private redis-server (no persistence) at
  127.0.0.1:<port>; Redis is configured for the classifier only, so no other Redis-backed
  module (greylist, ratelimit, replies, history, url_redirector, neural, reputation) runs;
  autolearn off (the stock statistic.conf has it commented out; we say so explicitly);
- network off: every module that queries DNS or the network per message is disabled
  (DISABLED_MODULES: rbl — which in 3.x also covers SURBL and email lists —, spf, dkim,
  dmarc, arc, asn, fuzzy_check, dcc, mx_check, once_received (PTR lookups), whitelist
  (combines SPF/DKIM/DMARC), rspamd_update, bimi, ...); phishing without its PhishTank /
  OpenPhish feeds; hfilter without its HELO, hostname and sender-domain checks (they
  resolve names). The resolver points at the benchmark's DNS sink (instant SERVFAIL,
  counted), so nothing left can stall; remote maps (maps.rspamd.com) fail once at start
  and their shipped fallbacks are used.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

from benchmarks.clients.rspamd import RspamdClient
from benchmarks.servers import (Server, ServerSet, chown_tree, free_port,
                                port_open, service_user)
from benchmarks.systems import SystemInfo, Training, version_of
from mailwarden_local.corpus import Split

DISABLED_MODULES = (
    "rbl", "surbl", "emails", "spf", "dkim", "dmarc", "arc", "asn", "fuzzy_check", "dcc",
    "mx_check", "once_received", "whitelist", "rspamd_update", "bimi", "url_redirector", "greylist",
    "ratelimit", "replies", "history_redis", "dkim_signing", "neural", "reputation",
    "external_services", "antivirus", "p0f", "clickhouse", "elastic", "metadata_exporter",
)

TOP_CONF = """\
# Written by benchmarks/systems/rspamd.py: the stock configuration (common.conf) with only
# the workers this benchmark needs, bound to loopback ports.
.include "$CONFDIR/common.conf"

options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}

logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    .include "$CONFDIR/logging.inc"
    # notice: one summary line per scanned message, like spamd's default log
    level = "notice";
}}

worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    count = {workers};
    mime = true;
}}

{proxy}worker "controller" {{
    bind_socket = "127.0.0.1:{controller_port}";
    count = 1;
    secure_ip = "127.0.0.1";
    static_dir = "${{WWWDIR}}";
}}
"""

# Rspamd's milter: the proxy worker in milter mode, scanning with the normal workers (its
# upstream), as a Postfix in front of Rspamd is set up (benchmarks/protocols.py).
PROXY_WORKER = """\
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{proxy_port}";
    milter = yes;
    timeout = 120s;
    count = {workers};
    upstream "local" {{
        default = yes;
        hosts = "127.0.0.1:{port}";
    }}
}}

"""

OPTIONS_INC = """\
dns {{
    nameserver = ["{dns}"];
    timeout = 0.5s;
    retransmits = 1;
}}
hs_cache_dir = "{hs_cache}";
"""

CLASSIFIER_CONF = """\
backend = "redis";
servers = "127.0.0.1:{redis_port}";
autolearn = false;
"""


class Rspamd:
    name = "Rspamd"

    def __init__(self, work: Path, servers: ServerSet, *, workers: int, dns: str,
                 hs_cache: Path, progress=print, milter_proxy: bool = False) -> None:
        self.work = work
        self.servers = servers
        self.workers = workers
        self.dns = dns
        self.hs_cache = hs_cache
        self.progress = progress
        self.user = service_user("_rspamd")
        self.redis_user = service_user("redis")
        self.port = free_port()
        self.controller_port = free_port()
        self.redis_port = free_port()
        # the milter proxy worker's port (0: no proxy worker)
        self.proxy_port = free_port() if milter_proxy else 0
        self.rspamd: Server | None = None
        self.redis: Server | None = None
        self.trained = Training()
        self.hs_wait = 0.0
        self.start_seconds = 0.0

    # -- configuration ------------------------------------------------------------------
    def _write_config(self) -> Path:
        etc = self.work / "etc"
        local = etc / "local.d"
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)  # rspamd and redis run as their own users
        local.mkdir(parents=True, exist_ok=True)
        for name in ("db", "run", "log", "redis"):
            (self.work / name).mkdir(exist_ok=True)
        self.hs_cache.mkdir(parents=True, exist_ok=True)
        proxy = PROXY_WORKER.format(proxy_port=self.proxy_port, port=self.port,
                                    workers=self.workers) if self.proxy_port else ""
        (etc / "rspamd.conf").write_text(TOP_CONF.format(
            port=self.port, controller_port=self.controller_port, workers=self.workers,
            proxy=proxy))
        (local / "options.inc").write_text(OPTIONS_INC.format(dns=self.dns,
                                                               hs_cache=self.hs_cache))
        (local / "classifier-bayes.conf").write_text(
            CLASSIFIER_CONF.format(redis_port=self.redis_port))
        for module in DISABLED_MODULES:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        # phishing stays (it checks links locally) without its DNS-based PhishTank lookups
        (local / "phishing.conf").write_text("phishtank_enabled = false;\n"
                                             "openphish_enabled = false;\n")
        # hfilter keeps its content checks (URLs, recipients); its HELO, hostname and
        # sender-domain checks resolve names (any failure scores as "does not resolve")
        # and need the MTA's HELO and reverse DNS, which nobody gets here.
        (local / "hfilter.conf").write_text("helo_enabled = false;\nhostname_enabled = false;"
                                            "\nfrom_enabled = false;\nmid_enabled = false;\n")
        chown_tree(self.work, self.user)
        chown_tree(self.hs_cache, self.user)
        return etc / "rspamd.conf"

    def _vars(self) -> list[str]:
        return [f"--var=LOCAL_CONFDIR={self.work / 'etc'}", f"--var=DBDIR={self.work / 'db'}",
                f"--var=RUNDIR={self.work / 'run'}", f"--var=LOGDIR={self.work / 'log'}"]

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        started = time.monotonic()
        conf = self._write_config()
        self.redis = self.servers.start(
            "redis-server", ["redis-server", "--bind", "127.0.0.1", "--port",
                             str(self.redis_port), "--save", "", "--appendonly", "no",
                             "--dir", str(self.work / "redis"), "--protected-mode", "yes",
                             "--daemonize", "no"],
            log=self.work / "redis.log", user=self.redis_user)
        chown_tree(self.work / "redis", self.redis_user)
        self.redis.wait_until(lambda: port_open(self.redis_port), what="redis port open",
                              timeout=30)
        argv = ["rspamd", "-f", "-c", str(conf), *self._vars()]
        if self.user is not None:
            # rspamd drops to this user itself after reading its config
            argv += ["-u", self.user.pw_name, "-g", self.user.pw_name]
        self.rspamd = self.servers.start("rspamd", argv, log=self.work / "rspamd.out")
        self.rspamd.wait_until(lambda: self._ping(self.port) and self._ping(self.controller_port),
                               what="/ping on both workers", timeout=120)
        # The hs_helper compiles the rules into Hyperscan databases after start; until the
        # workers load them they scan with PCRE. Measure only once every worker has them.
        self.hs_wait = self.rspamd.wait_until(
            self._hyperscan_loaded, what="Hyperscan databases loaded by every worker",
            timeout=900, interval=0.5)
        self.start_seconds = time.monotonic() - started

    def _ping(self, port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _hyperscan_loaded(self) -> bool:
        log = self.work / "log" / "rspamd.log"
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            return False
        # The hs_helper reports how many expressions it had to compile. 0: the cache was
        # complete, the main process loaded it before forking, the workers have it. N > 0:
        # each worker logs when it picked up the new databases.
        compiled = re.search(r"\(hs_helper\).*compiled (\d+) regular expressions", text)
        if not compiled:
            return False
        if compiled.group(1) == "0":
            return "full hyperscan database" in text
        ready = len(re.findall(r"\(normal\) rspamd_worker_hyperscan_ready", text))
        return ready >= self.workers

    def roots(self) -> list[int]:
        return [s.pid for s in (self.rspamd, self.redis) if s is not None]

    def client(self) -> RspamdClient:
        return RspamdClient(self.port)

    def stop(self) -> None:
        for server in (self.rspamd, self.redis):
            if server is not None:
                self.servers.stop(server)
        self.rspamd = self.redis = None

    # -- training -----------------------------------------------------------------------
    def train(self, split: Split) -> None:
        """Learn the train split over the controller (`rspamc learn_ham/learn_spam`).

        `Learn-Type: bulk` makes Rspamd learn every message, as sa-learn and `mailwarden
        train` do; without it Rspamd skips messages its Bayes already classifies with
        >= 95% confidence (train-on-error), so the three would not learn the same mail."""
        started = time.monotonic()
        log = self.work / "learn.log"
        counts = {}
        refused: Counter[str] = Counter()
        for label in ("ham", "spam"):
            files = split.files("train", label)
            before = log.stat().st_size if log.exists() else 0
            # Files, not the directory: rspamc skips the symlinks split_corpus lays out.
            for i in range(0, len(files), 500):
                self.servers.run(
                    "rspamc learn", ["rspamc", "-h", f"127.0.0.1:{self.controller_port}",
                                     "-n", "4", "-t", "60", "--header", "Learn-Type: bulk",
                                     f"learn_{label}", *map(str, files[i:i + 500])], log=log)
                self.progress(f"  Rspamd: learned {min(i + 500, len(files))}/{len(files)} "
                              f"{label}")
            text = log.read_bytes()[before:].decode(errors="replace")
            learned = len(re.findall(r"success\s*=\s*true", text))
            refused.update(re.sub(r"<[^>]*>", "<id>", m).strip()
                           for m in re.findall(r'error\s*=\s*"([^"]*)"', text))
            counts[label] = (learned, len(files))
        note = "rspamc learn_ham/learn_spam (Learn-Type: bulk)"
        if refused:
            note += "; refused: " + ", ".join(f"{n} x {reason}" for reason, n in
                                              refused.most_common(3))
        self.trained = Training(ham=counts["ham"][0], spam=counts["spam"][0],
                                offered_ham=counts["ham"][1], offered_spam=counts["spam"][1],
                                seconds=time.monotonic() - started, note=note)

    def info(self) -> SystemInfo:
        return SystemInfo(
            name=self.name, version=version_of(["rspamd", "--version"]).replace(
                "Rspamd daemon version ", "Rspamd "),
            workers=self.workers,
            config=[f"normal worker count = {self.workers}, one controller; stock rules, "
                    "scores and actions (spam = action add header/rewrite subject/reject, "
                    "score >= 6)",
                    "Bayes on a private redis-server (measured with Rspamd: its CPU and "
                    "memory are included), autolearn off",
                    "disabled (network/DNS or stateful): " + ", ".join(DISABLED_MODULES),
                    f"Hyperscan databases cached in {self.hs_cache}"])

