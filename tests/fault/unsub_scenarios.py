"""The unsubscribe store scenarios (5): the PostgreSQL primary killed during a stream of
unsubscribes and a synchronous standby promoted; the unsubscribe server killed mid-stream.

Writers behave like a well-made sender: every unsubscribe carries an idempotency key and
is retried with the same key until it is acknowledged (UNAVAILABLE, DEADLINE_EXCEEDED and
a dropped connection all mean "outcome unknown, retry"). Afterwards the database itself
(not the server under test) is read: every acknowledged unsubscribe must be there, exactly
once in the suppressions, the change log and the idempotency keys, with the sequence the
acknowledgement carried.

The failover is done the way an HA manager (CloudNativePG, Patroni) does it, by this code:
SIGKILL the primary's process group, promote the synchronous standby, then give the new
primary a synchronous standby of its own (pg_basebackup from it) — a store with
`--durability replicated` rightly refuses writes until one is in sync. The unavailability
window includes all of that; its parts are reported separately.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from testkit.pg import PgCluster
from testkit.store import StoreProcess
from tests.fault.common import FaultEnv, ScenarioResult

ATTEMPT_TIMEOUT = 3.0
RETRY_PAUSE = 0.1
SCOPE = "newsletter"


@dataclass
class Request:
    address: str
    key: str
    first_attempt: float
    last_attempt: float = 0.0
    acked_at: float = 0.0
    attempts: int = 0
    sequence: int = 0
    already_existed: bool = False
    errors: tuple[str, ...] = ()


class Writers:
    """N threads sending unsubscribes of fresh addresses, each retried until acknowledged."""

    def __init__(self, target: str, count: int, prefix: str) -> None:
        self.target = target
        self.count = count
        self.prefix = prefix
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), name=f"writer-{i}")
                        for i in range(count)]

    def start(self) -> "Writers":
        for thread in self.threads:
            thread.start()
        return self

    def _run(self, index: int) -> None:
        channel = grpc.insecure_channel(self.target)
        stub = pb_grpc.UnsubscribeStoreStub(channel)
        number = 0
        try:
            while not self.stopping.is_set():
                request = Request(f"{self.prefix}-w{index}-{number}@example.com",
                                  uuid.uuid4().hex, time.monotonic())
                number += 1
                with self.lock:
                    self.requests.append(request)
                self._until_acked(stub, request, give_up=time.monotonic() + 120)
        finally:
            channel.close()

    def _until_acked(self, stub, request: Request, give_up: float) -> None:
        errors = []
        while time.monotonic() < give_up:
            request.attempts += 1
            request.last_attempt = time.monotonic()
            try:
                reply = stub.Unsubscribe(pb.UnsubscribeRequest(
                    address=request.address, scope=SCOPE, reason=pb.UNSUBSCRIBE,
                    source="fault-suite", idempotency_key=request.key),
                    timeout=ATTEMPT_TIMEOUT, wait_for_ready=False)
            except grpc.RpcError as exc:
                errors.append(exc.code().name)
                time.sleep(RETRY_PAUSE)
                continue
            request.acked_at = time.monotonic()
            request.sequence = reply.sequence
            request.already_existed = reply.already_existed
            break
        request.errors = tuple(errors)

    def stop(self, timeout: float = 150.0) -> list[Request]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout)
        return self.requests

    def acked(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.acked_at]


def _wait_acks_after(writers: Writers, moment: float, timeout: float) -> float:
    """When the first call *sent* after `moment` was acknowledged (a reply already on its
    way at the fault does not end the unavailability)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        later = [r.acked_at for r in writers.acked() if r.last_attempt > moment]
        if later:
            return min(later)
        time.sleep(0.02)
    raise AssertionError(f"no unsubscribe acknowledged within {timeout:g}s after the fault")


def _verify(result: ScenarioResult, rows: dict, requests: list[Request],
            fault_wall: float) -> None:
    """Check the database against what the writers were told. `fault_wall` is the
    fault's wall-clock time (the database stamps changes with its clock)."""
    acked = [r for r in requests if r.acked_at]
    suppressions, changes, keys = rows["suppressions"], rows["changes"], rows["keys"]
    lost = [r for r in acked if r.address not in suppressions]
    dup_changes = {a: n for a, n in changes.items() if n > 1}
    dup_keys = {k: n for k, n in keys.items() if n > 1}
    wrong_seq = [r for r in acked if r.address in suppressions
                 and suppressions[r.address] != r.sequence]
    replayed_as_existing = [r for r in acked if r.already_existed]
    ours = {r.address for r in requests}
    unacked_committed = [a for a in suppressions if a in ours and a not in
                         {r.address for r in acked}]
    result.figure("unsubscribes acknowledged", len(acked))
    result.figure("retried (more than one attempt)", sum(r.attempts > 1 for r in acked))
    result.figure("never acknowledged (writers stopped)", len(requests) - len(acked))
    result.figure("committed but never acknowledged", len(unacked_committed))
    # Retried requests whose first attempt had committed before the fault: their retry was
    # answered from the idempotency key (the reply had been lost, not the write).
    from_key = [r for r in acked if r.attempts > 1
                and rows["committed"].get(r.address, float("inf")) < fault_wall]
    result.figure("retries answered from the idempotency key (committed before the fault)",
                  len(from_key))
    result.check("0 acknowledged unsubscribes lost", not lost,
                 f"{len(lost)} lost, e.g. {[r.address for r in lost[:3]]}")
    result.check("no duplicates: one change and one idempotency key per address",
                 not dup_changes and not dup_keys
                 and all(changes.get(a, 0) == 1 for a in suppressions if a in ours),
                 f"changes {list(dup_changes.items())[:3]}, keys {list(dup_keys.items())[:3]}")
    result.check("every acknowledgement carries the stored sequence", not wrong_seq,
                 f"{len(wrong_seq)} differ")
    result.check("retries with the idempotency key return the original answer "
                 "(never 'already existed')", not replayed_as_existing,
                 f"{len(replayed_as_existing)} said already_existed")


def _rows_postgres(dsn: str, prefix: str) -> dict:
    like = f"{prefix}-%"
    with psycopg.connect(dsn) as conn:
        suppressions = dict(conn.execute(
            "SELECT address, seq FROM unsubscribe_suppressions WHERE address LIKE %s",
            (like,)).fetchall())
        changes = dict(conn.execute(
            "SELECT address, count(*) FROM unsubscribe_changes WHERE address LIKE %s "
            "GROUP BY address", (like,)).fetchall())
        committed = dict(conn.execute(
            "SELECT address, extract(epoch FROM min(at)) FROM unsubscribe_changes "
            "WHERE address LIKE %s GROUP BY address", (like,)).fetchall())
        keys = dict(conn.execute(
            "SELECT key, count(*) FROM unsubscribe_idempotency_keys WHERE address LIKE %s "
            "GROUP BY key", (like,)).fetchall())
    return {"suppressions": suppressions, "changes": changes, "keys": keys,
            "committed": {a: float(t) for a, t in committed.items()}}


def _rows_sqlite(path: Path, prefix: str) -> dict:
    import sqlite3

    like = f"{prefix}-%"
    with sqlite3.connect(path) as conn:
        suppressions = dict(conn.execute(
            "SELECT address, seq FROM unsubscribe_suppressions WHERE address LIKE ?",
            (like,)).fetchall())
        changes = dict(conn.execute(
            "SELECT address, count(*) FROM unsubscribe_changes WHERE address LIKE ? "
            "GROUP BY address", (like,)).fetchall())
        keys = dict(conn.execute(
            "SELECT key, count(*) FROM unsubscribe_idempotency_keys WHERE address LIKE ? "
            "GROUP BY key", (like,)).fetchall())
        committed = dict(conn.execute(
            "SELECT address, min(at) FROM unsubscribe_changes WHERE address LIKE ? "
            "GROUP BY address", (like,)).fetchall())
    return {"suppressions": suppressions, "changes": changes, "keys": keys,
            "committed": {a: _epoch(t) for a, t in committed.items()}}


def _epoch(value) -> float:
    """A change's timestamp (SQLite stores ISO text or numbers) as Unix seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime, timezone

    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _store(workdir: Path, args: list[str], name: str) -> StoreProcess:
    # The server's default readiness interval (2 s), not the unit tests' 0.5 s: it is part
    # of the unavailability a user would see.
    return StoreProcess(workdir, args, name=name,
                        extra_args=["--no-one-click", "--readiness-interval", "2"]).start()


# --- 5a. the PostgreSQL primary killed, the synchronous standby promoted -------------------
def pg_failover(env: FaultEnv) -> ScenarioResult:
    profile = env.profile
    result = ScenarioResult("pg_failover", "Unsubscribe store: PostgreSQL primary killed, "
                            "standby promoted", profile.name)
    workdir = env.dir("pg-failover")
    prefix = f"fo{uuid.uuid4().hex[:8]}"
    with PgCluster(standby=True) as cluster:
        cluster.create_database("app")
        dsn_file = workdir / "dsn"
        dsn_file.write_text(cluster.multi_host_dsn("app"))
        store = _store(workdir, ["--store", "postgres", "--dsn-file", str(dsn_file),
                                 "--durability", "replicated"], "store")
        writers = Writers(store.target, profile.unsub_writers, prefix).start()
        try:
            time.sleep(profile.unsub_before)
            acked_before = len(writers.acked())
            fault_wall = time.time()
            killed_at = time.monotonic()
            # kill, promote, and a new synchronous standby of the promoted primary
            failover = cluster.fail_over()
            promoted_at = killed_at + (failover.promoted - failover.killed)
            synced_at = killed_at + (failover.synchronous - failover.killed)
            first_ack = _wait_acks_after(writers, killed_at, 120)
            time.sleep(profile.unsub_after)
        finally:
            requests = writers.stop()
            store.close()
        rows = _rows_postgres(cluster.primary.dsn("app"), prefix)
    stalled = [r for r in requests if r.acked_at and r.first_attempt < first_ack
               and r.acked_at >= first_ack]
    result.figure("writers", f"{profile.unsub_writers} (idempotency key each, retried "
                  f"every {RETRY_PAUSE:g} s, {ATTEMPT_TIMEOUT:g} s per attempt)")
    result.figure("acknowledged before the kill", acked_before)
    result.figure("unavailability (kill → first acknowledgement)",
                  f"{first_ack - killed_at:.2f} s")
    result.figure("… promote the standby", f"{promoted_at - killed_at:.2f} s")
    result.figure("… new synchronous standby in sync", f"{synced_at - promoted_at:.2f} s")
    result.figure("… store Ready and acknowledging", f"{first_ack - synced_at:.2f} s")
    result.figure("longest wait for one acknowledgement",
                  f"{max((r.acked_at - r.first_attempt for r in stalled), default=0):.2f} s")
    _verify(result, rows, requests, fault_wall)
    return result.finish()


# --- 5b. the unsubscribe server killed mid-stream ------------------------------------------
def store_kill(env: FaultEnv) -> ScenarioResult:
    profile = env.profile
    result = ScenarioResult("store_kill", "Unsubscribe server SIGKILLed mid-stream",
                            profile.name)
    outcomes = []
    for backend in ("postgres", "sqlite"):
        workdir = env.dir(f"store-kill-{backend}")
        prefix = f"sk{uuid.uuid4().hex[:8]}"
        cluster = PgCluster().start() if backend == "postgres" else None
        try:
            if cluster is not None:
                dsn_file = workdir / "dsn"
                dsn_file.write_text(cluster.create_database("app"))
                args = ["--store", "postgres", "--dsn-file", str(dsn_file)]
            else:
                args = ["--store", "sqlite", "--sqlite-path", str(workdir / "store.db")]
            store = _store(workdir, args, "store")
            writers = Writers(store.target, profile.unsub_writers, prefix).start()
            try:
                time.sleep(profile.unsub_before)
                fault_wall = time.time()
                killed_at = time.monotonic()
                store.kill9()
                # The kubelet restarts the container (same pod address and ports).
                store.start()
                restarted_at = time.monotonic()
                first_ack = _wait_acks_after(writers, killed_at, 120)
                time.sleep(profile.unsub_after)
            finally:
                requests = writers.stop()
                store.close()
            rows = _rows_postgres(cluster.primary.dsn("app"), prefix) if cluster \
                else _rows_sqlite(workdir / "store.db", prefix)
        finally:
            if cluster is not None:
                cluster.close()
        sub = ScenarioResult("store_kill", backend, profile.name)
        _verify(sub, rows, requests, fault_wall)
        outcomes.append((backend, sub, killed_at, restarted_at, first_ack))
    for backend, sub, killed_at, restarted_at, first_ack in outcomes:
        result.figure(f"{backend}: restart → serving", f"{restarted_at - killed_at:.2f} s")
        result.figure(f"{backend}: unavailability (kill → first acknowledgement)",
                      f"{first_ack - killed_at:.2f} s")
        for label, value in sub.figures:
            result.figure(f"{backend}: {label}", value)
        for check in sub.checks:
            result.check(f"{backend}: {check.what}", check.ok, check.detail)
    return result.finish()
