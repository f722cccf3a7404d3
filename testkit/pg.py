"""Real PostgreSQL servers for tests and benchmarks: a primary and, optionally, a synchronous
standby made with pg_basebackup — on loopback, ephemeral ports, temporary directories.

    with PgCluster(standby=True) as cluster:
        dsn = cluster.create_database("t1")           # on the primary
        ...
        cluster.kill_primary()                         # SIGKILL to the primary's process group
        cluster.promote_standby()                      # the standby becomes a primary
        cluster.standby.dsn("t1")

or, the whole failover an HA manager does (the promoted node becomes ``cluster.primary``
and gets a fresh synchronous standby of its own):

        times = cluster.fail_over()

PostgreSQL refuses to run as root: when the tests run as root, every PostgreSQL program runs
as the ``postgres`` user (created by the Debian ``postgresql`` package that
``scripts/bootstrap.sh`` installs) and the data directories are owned by it. Binaries are found
with ``pg_config --bindir``, then ``/usr/lib/postgresql/<newest>/bin``, then $PATH.
Every process started is stopped by ``close()`` (fixtures call it in their finalizer).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

__all__ = ["Failover", "PgCluster", "PgNode", "PgUnavailable", "find_pg_bindir"]


class PgUnavailable(RuntimeError):
    """PostgreSQL binaries are not installed (run scripts/bootstrap.sh)."""


def find_pg_bindir() -> Path:
    candidates: list[Path] = []
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        candidates.append(Path(out))
    except (OSError, subprocess.SubprocessError):
        pass

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", Path(path).parent.parent.name))
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                                  key=version, reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    raise PgUnavailable("PostgreSQL server binaries not found (initdb, postgres); install the "
                        "Debian 'postgresql' package (scripts/bootstrap.sh does)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _RunAs:
    """Run PostgreSQL programs as the postgres user when we are root."""

    def __init__(self) -> None:
        self.user = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root but there is no 'postgres' user to run "
                                    "PostgreSQL as (install the Debian 'postgresql' package)") \
                    from None
            self.user, self.uid, self.gid = "postgres", entry.pw_uid, entry.pw_gid

    def popen_kwargs(self) -> dict:
        if self.user is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": [],
                "env": {**os.environ, "HOME": tempfile.gettempdir(), "USER": "postgres"}}

    def own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.uid, self.gid)


class PgNode:
    """One postgres server process."""

    def __init__(self, cluster: PgCluster, name: str, datadir: Path) -> None:
        self.cluster = cluster
        self.name = name
        self.datadir = datadir
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = cluster.base / f"{name}.log"
        self.extra_settings: dict[str, str] = {}

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=5"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start on a free ephemeral port (retrying if another process takes it first), or on
        the port it had before when restarted."""
        keep_port = self.port
        for _ in range(5):
            self.port = keep_port or _free_port()
            settings = {
                "listen_addresses": ",".join(["127.0.0.1", *self.cluster.listen]),
                "port": str(self.port),
                "unix_socket_directories": str(self.datadir),
                "fsync": "on" if self.cluster.fsync else "off",
                "shared_buffers": "32MB", "max_connections": "60",
                "wal_level": "replica", "max_wal_senders": "5", "hot_standby": "on",
                "wal_sender_timeout": "5s", "wal_receiver_status_interval": "1s",
                **self.extra_settings,
            }
            args = [str(self.cluster.bindir / "postgres"), "-D", str(self.datadir)]
            for key, value in settings.items():
                args += ["-c", f"{key}={value}"]
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True,
                                         **self.cluster.runas.popen_kwargs())
            log.close()
            if self._wait_accepting(timeout):
                return
            self.stop(immediate=True)
            if keep_port:
                break
        raise RuntimeError(f"postgres {self.name} did not start; log:\n{self.log_tail()}")

    def _wait_accepting(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def execute(self, query: "str | sql.Composable", params: tuple = (),
                dbname: str = "postgres") -> list[tuple]:
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def kill9(self) -> None:
        """SIGKILL the postmaster's process group: a crash. The backends are not in it
        (PostgreSQL gives each a session of its own); they exit when they find the
        postmaster gone, as after a real crash. `frozen()` reaches them all."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def processes(self) -> list[int]:
        """The postmaster's pid and its children's. Not its process group: PostgreSQL calls
        setsid() in every child it forks, so the group holds the postmaster alone."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        pids = [self.proc.pid]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    # pid (comm) state ppid ...: comm may hold spaces, so split after ')'
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.split("/")[2]))
        return pids

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server hung (a frozen disk, a paused VM): the postmaster and every backend
        SIGSTOPped — open connections stay open, queries and new connections get no answer
        — and SIGCONTinued on leaving the block."""
        stopped: list[int] = []
        try:
            # The postmaster first, so it forks nothing between the listing and the stop.
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def stop(self, immediate: bool = False, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                # SIGINT = fast shutdown, SIGQUIT = immediate shutdown
                os.killpg(self.proc.pid, signal.SIGQUIT if immediate else signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.kill9()
        # Backends that outlive a killed postmaster exit on their own; make sure of it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def promote(self, timeout: float = 60.0) -> None:
        self.execute("SELECT pg_promote(wait => true, wait_seconds => %s)", (int(timeout),))
        deadline = time.monotonic() + timeout
        while self.execute("SELECT pg_is_in_recovery()")[0][0]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} still in recovery after promote")
            time.sleep(0.1)


@dataclass(frozen=True)
class Failover:
    """Wall-clock moments (time.time()) of one `PgCluster.fail_over()`."""
    killed: float        # the primary's process group SIGKILLed
    promoted: float      # the standby answers as a primary
    synchronous: float   # the new primary has a synchronous standby in sync again


class PgCluster:
    """A primary and optionally one synchronous standby (application_name ``standby1``)."""

    def __init__(self, *, standby: bool = False, fsync: bool = True,
                 base_dir: str | None = None, listen: tuple[str, ...] = (),
                 client_networks: tuple[str, ...] = ()) -> None:
        """`listen`: addresses to listen on besides 127.0.0.1 (say, one that pods of a test
        cluster route to; never a wildcard); `client_networks`: CIDRs whose clients may log
        in with a password (`create_login`). Loopback connections are trusted as before."""
        if any(addr in ("*", "0.0.0.0", "::") for addr in listen):
            raise ValueError("listen on specific addresses only, not on every interface")
        self.listen = tuple(listen)
        self.client_networks = tuple(client_networks)
        self.bindir = find_pg_bindir()
        self.runas = _RunAs()
        self.fsync = fsync
        self.want_standby = standby
        self.base = Path(tempfile.mkdtemp(prefix="mailwarden-pg-", dir=base_dir))
        self.runas.own(self.base)
        self.primary = PgNode(self, "primary", self.base / "primary")
        self.standby: PgNode | None = None
        self.retired: list[PgNode] = []  # former primaries (stopped with the cluster)
        self._standbys = 0

    def _run(self, args: list[str], timeout: float = 120.0) -> None:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, cwd=self.base,
                                **self.runas.popen_kwargs())
        if result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}")

    def start(self) -> PgCluster:
        try:
            self._run([str(self.bindir / "initdb"), "-D", str(self.primary.datadir), "-U",
                       "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
            if self.client_networks:
                # Appended after initdb's trusted loopback lines; a standby copies the file.
                with (self.primary.datadir / "pg_hba.conf").open("a") as hba:
                    for network in self.client_networks:
                        hba.write(f"host all all {network} scram-sha-256\n")
            self.primary.start()
            if self.want_standby:
                self.add_standby()
        except BaseException:
            self.close()
            raise
        return self

    def add_standby(self, timeout: float = 60.0) -> PgNode:
        """pg_basebackup the primary into a standby, start it and make it synchronous. The
        first is ``standby`` (application_name ``standby1``), later ones ``standbyN``."""
        self._standbys += 1
        number = self._standbys
        name = "standby" if number == 1 else f"standby{number}"
        node = PgNode(self, name, self.base / name)
        for attempt in range(1, 4):
            try:
                self._run([str(self.bindir / "pg_basebackup"), "-D", str(node.datadir),
                           "-X", "stream", "-R", "--checkpoint=fast", "--no-sync", "-d",
                           f"host=127.0.0.1 port={self.primary.port} user=postgres "
                           f"application_name=standby{number}"])
                break
            except RuntimeError:
                # pg_basebackup has been seen to crash (SIGSEGV) when started the instant a
                # promotion finished; an HA manager retries the clone, and so do we.
                shutil.rmtree(node.datadir, ignore_errors=True)
                if attempt == 3:
                    raise
                time.sleep(1.0)
        self.standby = node
        node.start()
        self.set_synchronous(f"standby{number}")
        self.wait_sync(timeout)
        return node

    def fail_over(self, timeout: float = 60.0) -> Failover:
        """What an HA manager (CloudNativePG, Patroni) does when the primary dies: SIGKILL the
        primary's process group, promote the synchronous standby, then clone a synchronous
        standby of the new primary. Afterwards ``primary`` is the promoted node and
        ``standby`` the new one; the killed node is kept in ``retired``."""
        if self.standby is None:
            raise RuntimeError("no standby to fail over to")
        killed = time.time()
        self.kill_primary()
        promoted_node = self.promote_standby()
        promoted = time.time()
        self.retired.append(self.primary)
        self.primary, self.standby = promoted_node, None
        self.add_standby(timeout)
        return Failover(killed, promoted, time.time())

    def set_synchronous(self, names: str) -> None:
        """Set the primary's synchronous_standby_names ('' = asynchronous) and reload."""
        self.primary.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
        self.primary.execute("SELECT pg_reload_conf()")

    def wait_sync(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.primary.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
            if rows[0][0] >= 1:
                return
            time.sleep(0.1)
        raise RuntimeError("standby did not reach sync_state = 'sync'; standby log:\n"
                           + (self.standby.log_tail() if self.standby else ""))

    def create_database(self, name: str) -> str:
        """A fresh database on the primary; returns its DSN."""
        self.primary.execute(f'CREATE DATABASE "{name}"')
        return self.primary.dsn(name)

    def create_login(self, role: str, password: str, database: str,
                     grants: tuple[str, ...] = ()) -> None:
        """A role that logs in with a password (from `client_networks`), owning a fresh
        `database`; `grants`: roles it is granted (e.g. pg_monitor)."""
        # Utility statements take no bind parameters: compose them with quoting instead.
        self.primary.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
        for granted in grants:
            self.primary.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted),
                                                                  sql.Identifier(role)))
        self.primary.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(database), sql.Identifier(role)))

    def multi_host_dsn(self, dbname: str) -> str:
        """A DSN listing primary and standby; libpq picks whichever accepts writes, so clients
        follow a promotion."""
        nodes = [self.primary] + ([self.standby] if self.standby else [])
        hosts = ",".join("127.0.0.1" for _ in nodes)
        ports = ",".join(str(n.port) for n in nodes)
        return (f"host={hosts} port={ports} user=postgres dbname={dbname} "
                "target_session_attrs=read-write connect_timeout=3")

    def kill_primary(self) -> None:
        self.primary.kill9()

    def promote_standby(self) -> PgNode:
        if self.standby is None:
            raise RuntimeError("no standby to promote")
        self.standby.promote()
        return self.standby

    def close(self) -> None:
        # Immediate shutdown: the directories are deleted next, so a shutdown checkpoint
        # (seconds of fsync with fsync=on) would buy nothing.
        for node in (self.standby, self.primary, *self.retired):
            if node is not None:
                node.stop(immediate=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
