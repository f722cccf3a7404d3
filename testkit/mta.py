"""Real mail servers for the protocol tests: a Postfix and an Exim instance of their own
(and Rspamd's milter proxy, which MTAs put in front of a scanner),
each with its config, queue and mailboxes in a temp dir and an SMTP port on loopback,
started by the test and stopped after it (Debian's postfix package; exim4-daemon-heavy
unpacked into .cache/exim by scripts/bootstrap.sh, since it conflicts with postfix).

Mail for `<user>@test.example` is delivered to `<mail>/<user>/` (a maildir: Postfix's
virtual agent, Exim's appendfile), so a test reads exactly what each recipient got.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import grp
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from testkit.processes import free_port

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "test.example"
POSTFIX = Path("/usr/sbin/postfix")
SENDMAIL = Path("/usr/sbin/sendmail")  # Postfix's
EXIM = REPO / ".cache" / "exim" / "usr" / "sbin" / "exim4"
START_TIMEOUT = 30.0
# The mailboxes of an instance.
USERS = ("bob", "carol", "dave", "erin", "frank")


class MtaMissing(RuntimeError):
    pass


def postfix_version() -> str:
    out = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def exim_version() -> str:
    out = subprocess.run([str(EXIM), "-bV", "-C", "/dev/null"], capture_output=True,
                         text=True)
    first = (out.stdout or out.stderr).splitlines()
    return next((line for line in first if line.startswith("Exim version")), "?")


def instance_root(kind: str) -> Path:
    """A directory of its own for one instance, which the MTAs' unprivileged users
    (postfix, Debian-exim, nobody) can reach: pytest's temp dirs are private to root."""
    root = Path(tempfile.mkdtemp(prefix=f"mailwarden-{kind}-"))
    root.chmod(0o755)
    return root


def wait_smtp_port(port: int, timeout: float, check) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as smtp:
                smtp.noop()
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no SMTP answer on port {port} within {timeout:g}s")


class Mailboxes:
    def __init__(self, root: Path) -> None:
        self.root = root

    def messages(self, user: str) -> list[email.message.EmailMessage]:
        out = []
        for sub in ("new", "cur"):
            directory = self.root / user / sub
            if directory.is_dir():
                for path in sorted(directory.iterdir()):
                    out.append(email.message_from_bytes(path.read_bytes(),
                                                        policy=email.policy.default))
        return out

    def wait(self, user: str, count: int = 1, timeout: float = 20.0
             ) -> list[email.message.EmailMessage]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages(user)
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


def send(port: int, mail_from: str, recipients: list[str], message: bytes,
         timeout: float = 60) -> dict:
    """Submit over SMTP; returns smtplib's refused recipients (raises SMTPDataError and the
    like with the server's reply)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
        smtp.ehlo("client.test.example")
        return smtp.sendmail(mail_from, recipients, message)


# --- Postfix ---------------------------------------------------------------------------------
MASTER_CF = """\
{address} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
local     unix - n n - - local
virtual   unix - n n - - virtual
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
config_directory = {etc}
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{domain}
mydomain = {domain}
myorigin = $mydomain
mydestination =
alias_maps =
alias_database =
default_transport = error:this test instance sends no mail out
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{etc}/mailboxes
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtputf8_enable = no
biff = no
default_process_limit = 20
smtpd_milters = {milters}
non_smtpd_milters = $smtpd_milters
milter_protocol = 6
milter_default_action = {default_action}
milter_connect_timeout = 2s
milter_command_timeout = 10s
milter_content_timeout = 30s
"""


class Postfix:
    """A Postfix instance: `Postfix(root, milter="inet:127.0.0.1:N").start()`."""

    def __init__(self, *, milter: str, default_action: str = "tempfail",
                 port: int | None = None, extra_config: str = "") -> None:
        if not POSTFIX.exists():
            raise MtaMissing("postfix is not installed (scripts/bootstrap.sh installs it)")
        self.root = instance_root("postfix")
        self.port = port or free_port()
        root = self.root
        self.etc = root / "etc"
        self.queue = root / "queue"
        self.mail = root / "mail"
        self.mailboxes = Mailboxes(self.mail)
        self.milter = milter
        self.default_action = default_action
        self.extra_config = extra_config  # main.cf lines appended (the benchmark's)
        self.master: subprocess.Popen | None = None

    def _write_config(self) -> None:
        nobody = pwd.getpwnam("nobody")
        for directory in (self.etc, self.queue, self.mail, self.root / "data"):
            directory.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        postfix = pwd.getpwnam("postfix")
        os.chown(self.root / "data", postfix.pw_uid, postfix.pw_gid)
        (self.etc / "main.cf").write_text(MAIN_CF.format(
            etc=self.etc, queue=self.queue, data=self.root / "data", mail=self.mail,
            root=self.root, domain=DOMAIN, uid=nobody.pw_uid, gid=nobody.pw_gid,
            milters=self.milter, default_action=self.default_action) + self.extra_config)
        (self.etc / "master.cf").write_text(MASTER_CF.format(
            address=f"127.0.0.1:{self.port}"))
        (self.etc / "mailboxes").write_text("".join(f"{user}@{DOMAIN} {user}/\n"
                                                    for user in USERS))

    def postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(POSTFIX), "-c", str(self.etc), *args], capture_output=True,
                              text=True, check=check, timeout=60)

    def start(self) -> "Postfix":
        self._write_config()
        self.postfix("set-permissions", check=False)  # creates the queue's directories
        self.postfix("check")
        # start-fg: master stays our child (killed with the test), logs to maillog_file
        self.master = subprocess.Popen([str(POSTFIX), "-c", str(self.etc), "start-fg"],
                                       stdout=subprocess.DEVNULL,
                                       stderr=open(self.root / "master.err", "wb"),
                                       start_new_session=True)
        wait_smtp_port(self.port, START_TIMEOUT, self._check_alive)
        return self

    def sendmail(self, mail_from: str, recipient: str, message: bytes) -> None:
        """Submit with Postfix's sendmail command (postdrop, pickup: non_smtpd_milters)."""
        subprocess.run([str(SENDMAIL), "-C", str(self.etc), "-f", mail_from, "-i", recipient],
                       input=message.replace(b"\r\n", b"\n"), check=True, capture_output=True,
                       timeout=60)

    def _check_alive(self) -> None:
        if self.master is not None and self.master.poll() is not None:
            raise AssertionError(f"postfix master exited ({self.master.returncode}): "
                                 f"{self.log()[-2000:]}")

    def log(self) -> str:
        parts = []
        for name in ("maillog", "master.err"):
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def held(self) -> int:
        """Messages in the hold queue (where milter quarantine puts them)."""
        hold = self.queue / "hold"
        return sum(1 for _ in hold.rglob("*") if _.is_file()) if hold.exists() else 0

    def stop(self) -> None:
        if self.master is None:
            return
        self.postfix("stop", check=False)
        try:
            self.master.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.master.pid, signal.SIGKILL)
            self.master.wait()
        try:  # the daemons master started share its process group: be sure they are gone
            os.killpg(self.master.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.master = None
        remove_tree(self.root)


# --- Exim ------------------------------------------------------------------------------------
EXIM_CONF = """\
exim_path = {exim}
keep_environment =
tls_advertise_hosts =
primary_hostname = mx.{domain}
qualify_domain = {domain}
domainlist local_domains = {domain}
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
spool_directory = {spool}
log_file_path = {root}/log/%slog
pid_file_path = {root}/exim.pid
exim_user = Debian-exim
exim_group = Debian-exim
never_users = root
host_lookup =
rfc1413_hosts =
prdr_enable = false
spamd_address = {spamd_address}
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data

begin acl

acl_check_rcpt:
  accept domains = +local_domains
  deny message = relay not permitted

acl_check_data:
  warn    spam = nobody:true{defer_ok}
          add_header = X-Exim-Spam-Score: $spam_score
          add_header = X-Exim-Spam-Action: $spam_action
          add_header = X-Exim-Spam-Report: $spam_report
  deny    spam = nobody{defer_ok}
          condition = ${{if eq{{$spam_action}}{{reject}}}}
          message = 5.7.1 Rejected as spam by Mailwarden (score $spam_score)
  accept

begin routers

local_user:
  driver = accept
  domains = +local_domains
  local_parts = {users}
  transport = maildir

begin transports

maildir:
  driver = appendfile
  directory = {mail}/$local_part_data
  maildir_format
  create_directory
  user = Debian-exim
  group = Debian-exim
  mode = 0640
"""


class Exim:
    """An Exim daemon with `spam =` against `spamd_address` (spamd or variant=rspamd)."""

    def __init__(self, *, spamd_address: str, defer_ok: bool = False) -> None:
        if not EXIM.exists():
            raise MtaMissing("exim4 is not unpacked in .cache/exim (scripts/bootstrap.sh)")
        try:
            self.user = pwd.getpwnam("Debian-exim")
            grp.getgrnam("Debian-exim")
        except KeyError:
            raise MtaMissing("no Debian-exim user (scripts/bootstrap.sh creates it)") from None
        self.root = instance_root("exim")
        self.port = free_port()
        root = self.root
        self.spool = root / "spool"
        self.mail = root / "mail"
        self.mailboxes = Mailboxes(self.mail)
        self.conf = root / "exim.conf"
        self.spamd_address = spamd_address
        self.defer_ok = defer_ok
        self.daemon: subprocess.Popen | None = None

    def start(self) -> "Exim":
        for directory in (self.spool, self.mail, self.root / "log"):
            directory.mkdir(parents=True, exist_ok=True)
            os.chown(directory, self.user.pw_uid, self.user.pw_gid)
        self.root.chmod(0o755)
        self.conf.write_text(EXIM_CONF.format(
            exim=EXIM, users=" : ".join(USERS), domain=DOMAIN, port=self.port,
            spool=self.spool, root=self.root, mail=self.mail,
            spamd_address=self.spamd_address,
            defer_ok="/defer_ok" if self.defer_ok else ""))
        # -bdf: daemon in the foreground; -odi: deliver at once, in the receiving process
        self.daemon = subprocess.Popen(
            [str(EXIM), "-C", str(self.conf), "-bdf", "-odi", "-oX", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "exim.err", "wb"),
            start_new_session=True)
        wait_smtp_port(self.port, START_TIMEOUT, self._check_alive)
        return self

    def _check_alive(self) -> None:
        if self.daemon is not None and self.daemon.poll() is not None:
            raise AssertionError(f"exim exited ({self.daemon.returncode}): {self.log()}")

    def log(self) -> str:
        parts = []
        for path in [self.root / "exim.err", *sorted((self.root / "log").glob("*log"))]:
            if path.exists():
                parts.append(f"--- {path.name}\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.daemon is None:
            return
        stop_group(self.daemon)
        self.daemon = None
        remove_tree(self.root)


def stop_group(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM the daemon's process group (it forks per connection), SIGKILL it after
    `grace` seconds, and reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- Rspamd's milter proxy -------------------------------------------------------------------
RSPAMD_PROXY_CONF = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{port}";
    milter = yes;
    timeout = 30s;
    count = 1;
    upstream "mailwarden" {{
        default = yes;
        hosts = "127.0.0.1:{upstream}";
    }}
}}
"""
# Rspamd loads all its modules and compiles its URL suffix list before it listens: seconds
# on an idle machine, more than a minute on a busy one.
RSPAMD_START_TIMEOUT = 300.0


class RspamdProxy:
    """Rspamd's proxy worker in milter mode, and nothing else of Rspamd: Postfix talks
    milter to it, it asks `upstream` (our Rspamd-protocol port) over HTTP."""

    def __init__(self, *, upstream_port: int) -> None:
        if shutil.which("rspamd") is None:
            raise MtaMissing("rspamd is not installed (scripts/bootstrap.sh installs it)")
        self.root = instance_root("rspamd")
        self.port = free_port()
        self.upstream_port = upstream_port
        self.process: subprocess.Popen | None = None

    def start(self) -> "RspamdProxy":
        for name in ("etc", "db", "run", "log"):
            (self.root / name).mkdir()
        (self.root / "etc" / "rspamd.conf").write_text(
            RSPAMD_PROXY_CONF.format(port=self.port, upstream=self.upstream_port))
        user = pwd.getpwnam("_rspamd")
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        self.process = subprocess.Popen(
            ["rspamd", "-f", "-c", str(self.root / "etc" / "rspamd.conf"),
             *(f"--var={k}={self.root / v}" for k, v in (("LOCAL_CONFDIR", "etc"),
                                                         ("DBDIR", "db"), ("RUNDIR", "run"),
                                                         ("LOGDIR", "log"))),
             "-u", "_rspamd", "-g", "_rspamd"],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "rspamd.err", "wb"),
            start_new_session=True)
        deadline = time.monotonic() + RSPAMD_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"rspamd exited ({self.process.returncode}): "
                                     f"{self.log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"rspamd's proxy did not listen within {RSPAMD_START_TIMEOUT:g}s")

    def log(self) -> str:
        parts = []
        for name in ("rspamd.err", "log/rspamd.log"):
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None
        remove_tree(self.root)
