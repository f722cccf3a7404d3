"""A real Haraka (npm; scripts/bootstrap.sh installs the versions pinned in
testkit/npm-haraka into .cache/haraka) with its own config dir and an SMTP port on
loopback, scanning with its `rspamd` plugin (our Rspamd port) or its `spamassassin`
plugin (our spamd port). Accepted mail goes to `<mail>/<user>/new/` (a maildir, written by
testkit/npm-haraka/queue_to_maildir.js), read with the same Mailboxes as Postfix's."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from testkit.mta import (
    DOMAIN,
    START_TIMEOUT,
    Mailboxes,
    MtaMissing,
    instance_root,
    remove_tree,
    stop_group,
    wait_smtp_port,
)
from testkit.processes import free_port

REPO = Path(__file__).resolve().parent.parent
HARAKA = REPO / ".cache" / "haraka" / "node_modules" / ".bin" / "haraka"
QUEUE_PLUGIN = REPO / "testkit" / "npm-haraka" / "queue_to_maildir.js"

# `[check] local_ip`/`private_ip`: the plugins skip mail from loopback unless told not to.
RSPAMD_INI = """\
host = 127.0.0.1
port = {port}
add_headers = always
[check]
local_ip = true
private_ip = true
[defer]
error = {defer}
timeout = {defer}
"""
SPAMASSASSIN_INI = """\
spamd_socket = 127.0.0.1:{port}
reject_threshold = {reject_threshold}
old_headers_action = drop
[check]
local_ip = true
private_ip = true
[defer]
error = {defer}
connect_timeout = {defer}
scan_timeout = {defer}
"""


class Haraka:
    """`Haraka(plugin="rspamd", port=N).start()`: Haraka whose DATA is scanned by `plugin`
    (`rspamd` or `spamassassin`) at 127.0.0.1:N. `defer` is the plugin's `[defer]`
    setting: what Haraka does when the scanner cannot be reached."""

    def __init__(self, *, plugin: str, port: int, defer: bool = True,
                 reject_threshold: float = 15.0) -> None:
        if not HARAKA.exists():
            raise MtaMissing("Haraka is not installed in .cache/haraka "
                             "(scripts/bootstrap.sh installs it)")
        if shutil.which("node") is None:
            raise MtaMissing("node is not installed (scripts/bootstrap.sh installs npm)")
        if plugin not in ("rspamd", "spamassassin"):
            raise ValueError(f"unknown Haraka scanner plugin {plugin!r}")
        self.plugin = plugin
        self.scanner_port = port
        self.defer = defer
        self.reject_threshold = reject_threshold
        self.root = instance_root("haraka")
        self.port = free_port()
        self.mail = self.root / "mail"
        self.mailboxes = Mailboxes(self.mail)
        self.process: subprocess.Popen | None = None

    def _write_config(self) -> None:
        # Haraka's own skeleton first (`haraka -i`: connection.ini and the rest it reads
        # at start), then the files that make it this test's instance.
        subprocess.run([str(HARAKA), "-i", str(self.root)], check=True, capture_output=True,
                       timeout=60)
        config = self.root / "config"
        self.mail.mkdir()
        shutil.copy(QUEUE_PLUGIN, self.root / "plugins" / "queue_to_maildir.js")
        files = {
            "smtp.ini": f"listen=127.0.0.1:{self.port}\nnodes=0\ndaemonize=false\n",
            "me": f"haraka.{DOMAIN}\n",
            "host_list": f"{DOMAIN}\n",
            "log.ini": "[main]\nlevel=info\n",
            # no TLS: the instance has no key (and loopback needs none)
            "plugins": f"rcpt_to.in_host_list\n{self.plugin}\nqueue_to_maildir\n",
            "rspamd.ini": RSPAMD_INI.format(port=self.scanner_port,
                                            defer=str(self.defer).lower()),
            "spamassassin.ini": SPAMASSASSIN_INI.format(
                port=self.scanner_port, defer=str(self.defer).lower(),
                reject_threshold=self.reject_threshold),
        }
        for name, text in files.items():
            (config / name).write_text(text)

    def start(self) -> "Haraka":
        self._write_config()
        env = dict(os.environ, HARAKA_MAILDIRS=str(self.mail))
        self.process = subprocess.Popen(
            [str(HARAKA), "-c", str(self.root)], env=env, cwd=self.root,
            stdout=open(self.root / "haraka.log", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_smtp_port(self.port, START_TIMEOUT, self._check_alive)
        return self

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"haraka exited ({self.process.returncode}): "
                                 f"{self.log()[-2000:]}")

    def log(self) -> str:
        path = self.root / "haraka.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None
        remove_tree(self.root)
