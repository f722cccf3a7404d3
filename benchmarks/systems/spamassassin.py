"""SpamAssassin's spamd (Debian packages spamassassin + spamd) in a temp dir, on loopback.

Configuration: the stock rules shipped by the package (/usr/share/spamassassin; no
sa-update: there is no network) and a private site-config directory holding copies of
/etc/spamassassin/*.pre and *.cf plus `zz_benchmark.cf`:
- Bayes on, trained with `sa-learn --ham/--spam` on the train split, stored under the
  temp dir; `bayes_auto_learn 0` (the Debian default is ON, and spamd would otherwise learn
  from the very test messages it scores);
- network off: spamd `-L` (local tests only) and `dns_available no`, `skip_rbl_checks 1`,
  Razor2, Pyzor and DCC off; the resolver points at the benchmark's DNS sink anyway;
- `-x` (no per-user config), `--min-children = --max-children = workers` (all children
  preforked), the default --max-conn-per-child (200: spamd recycles children, their CPU
  is still counted), default required_score 5.0 (spam = `Spam: True`), log to stderr.
spamd runs as the package's `debian-spamd` user when the benchmark runs as root.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from pathlib import Path

from benchmarks.clients.spamd import SpamdClient
from benchmarks.servers import Server, ServerSet, chown_tree, free_port, service_user
from benchmarks.systems import SystemInfo, Training, version_of
from mailwarden_local.corpus import Split

SITE_CONFIG = Path("/etc/spamassassin")

BENCH_CF = """\
# Written by benchmarks/systems/spamassassin.py
use_bayes 1
bayes_auto_learn 0
bayes_path {bayes}/bayes
bayes_file_mode 0770
lock_method flock
dns_available no
skip_rbl_checks 1
dns_server {dns}
ifplugin Mail::SpamAssassin::Plugin::Razor2
use_razor2 0
endif
ifplugin Mail::SpamAssassin::Plugin::Pyzor
use_pyzor 0
endif
ifplugin Mail::SpamAssassin::Plugin::DCC
use_dcc 0
endif
"""


class SpamAssassin:
    name = "SpamAssassin"

    def __init__(self, work: Path, servers: ServerSet, *, workers: int, dns: str,
                 progress=print) -> None:
        self.work = work
        self.servers = servers
        self.workers = workers
        self.dns = dns
        self.progress = progress
        self.user = service_user("debian-spamd")
        self.port = free_port()
        self.spamd: Server | None = None
        self.trained = Training()
        self.start_seconds = 0.0

    @property
    def etc(self) -> Path:
        return self.work / "etc"

    def _write_config(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)
        self.etc.mkdir(exist_ok=True)
        for name in ("bayes", "home"):
            (self.work / name).mkdir(exist_ok=True)
        for path in sorted(SITE_CONFIG.iterdir()):
            if path.suffix in (".pre", ".cf") and path.is_file():
                shutil.copy(path, self.etc / path.name)
        (self.etc / "zz_benchmark.cf").write_text(
            BENCH_CF.format(bayes=self.work / "bayes", dns=self.dns))
        chown_tree(self.work, self.user)

    def _env(self) -> dict[str, str]:
        home = str(self.work / "home")
        return {"HOME": home, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

    # -- training -----------------------------------------------------------------------
    def train(self, split: Split) -> None:
        """`sa-learn --ham` then `--spam` on the train split (offline, before spamd)."""
        self._write_config()
        started = time.monotonic()
        log = self.work / "sa-learn.log"
        counts = {}
        for label in ("ham", "spam"):
            before = log.stat().st_size if log.exists() else 0
            self.progress(f"  SpamAssassin: sa-learn --{label} on "
                          f"{len(split.files('train', label))} messages")
            self.servers.run("sa-learn", ["sa-learn", "--siteconfigpath", str(self.etc), "-L",
                                          "--no-sync", f"--{label}",
                                          str(split.dir("train", label))],
                             log=log, user=self.user, env=self._env(), cwd=self.work)
            text = log.read_bytes()[before:].decode(errors="replace")
            found = re.search(r"Learned tokens from (\d+) message\(s\) \((\d+) message\(s\) "
                              r"examined\)", text)
            counts[label] = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        self.servers.run("sa-learn --sync",
                         ["sa-learn", "--siteconfigpath", str(self.etc), "-L", "--sync"],
                         log=log, user=self.user, env=self._env(), cwd=self.work)
        self.trained = Training(ham=counts["ham"][0], spam=counts["spam"][0],
                                offered_ham=counts["ham"][1], offered_spam=counts["spam"][1],
                                seconds=time.monotonic() - started,
                                note="sa-learn --ham/--spam, then --sync")

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        started = time.monotonic()
        if not (self.etc / "zz_benchmark.cf").exists():
            self._write_config()
        argv = ["spamd", "-L", "-x", f"--listen=127.0.0.1:{self.port}", "-A", "127.0.0.1",
                f"--siteconfigpath={self.etc}", f"--max-children={self.workers}",
                f"--min-children={self.workers}", "--min-spare=1",
                f"--max-spare={self.workers}", "--syslog=stderr",
                f"--pidfile={self.work / 'spamd.pid'}",
                f"--helper-home-dir={self.work / 'home'}"]
        self.spamd = self.servers.start("spamd", argv, log=self.work / "spamd.out",
                                        user=self.user, env=self._env(), cwd=self.work)
        self.spamd.wait_until(self._pong, what="PONG", timeout=300, interval=0.25)
        # spamd answers PING from the parent's first child; wait for all preforked ones.
        self.spamd.wait_until(lambda: self._children() >= self.workers,
                              what=f"{self.workers} children", timeout=120, interval=0.25)
        self.start_seconds = time.monotonic() - started

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return b"PONG" in sock.recv(100)

    def _children(self) -> int:
        from testkit import procfs
        return len(procfs.tree([self.spamd.pid])) - 1 if self.spamd else 0

    def roots(self) -> list[int]:
        return [self.spamd.pid] if self.spamd else []

    def client(self) -> SpamdClient:
        return SpamdClient(self.port)

    def stop(self) -> None:
        if self.spamd is not None:
            self.servers.stop(self.spamd)
            self.spamd = None

    def info(self) -> SystemInfo:
        version = version_of(["spamd", "--version"]).replace("SpamAssassin Server version",
                                                             "SpamAssassin")
        return SystemInfo(
            name=self.name, version=version, workers=self.workers,
            config=[f"spamd -L -x, {self.workers} preforked children, stock Debian rules "
                    "(no sa-update, no sa-compile), required_score 5.0 (spam = Spam: True)",
                    "Bayes trained with sa-learn, bayes_auto_learn 0",
                    "network tests off: -L, dns_available no, skip_rbl_checks, no "
                    "Razor2/Pyzor/DCC"])
