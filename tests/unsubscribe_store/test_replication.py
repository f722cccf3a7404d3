"""Replicated durability with a real primary + synchronous standby (pg_basebackup) on
loopback: the store refuses Ready (and writes) without a synchronous standby, and after the
primary is SIGKILLed and the standby promoted, every acknowledged unsubscribe is there."""

from __future__ import annotations

import threading
import time

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from mailwarden.tokens import mint_token
from testkit.pg import PgCluster

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def unsub(stub, address, timeout=10):
    return stub.Unsubscribe(pb.UnsubscribeRequest(address=address, scope="news", source="test"),
                            timeout=timeout)


@pytest.fixture
def cluster():
    c = PgCluster().start()
    yield c
    c.close()


def _store(start_store, tmp_path, dsn: str, name: str = "store", **kw):
    dsn_file = tmp_path / f"{name}.dsn"
    dsn_file.write_text(dsn)
    return start_store(["--store", "postgres", "--dsn-file", str(dsn_file),
                        "--durability", "replicated"], name=name, **kw)


def _wait_status(stub, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
        if predicate(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_replicated_store_is_not_ready_without_a_sync_standby(cluster, start_store, tmp_path):
    cluster.create_database("app")
    server = _store(start_store, tmp_path, cluster.multi_host_dsn("app"), wait_serving=False)
    status = _wait_status(server.stub(), lambda s: "synchronous_standby_names" in s.reason)
    assert not status.ready and "synchronous_standby_names" in status.reason
    assert server.health() == NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        unsub(server.stub(), "early@example.com")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not ready" in info.value.details()

    # Names configured but no standby connected yet: still not ready.
    cluster.set_synchronous("standby1")
    status = _wait_status(server.stub(), lambda s: "no standby is in sync" in s.reason)
    assert "no standby is in sync" in status.reason and server.health() == NOT_SERVING

    cluster.add_standby()
    server.wait_health(SERVING)
    status = server.stub().GetStatus(pb.GetStatusRequest())
    assert status.ready and status.sync_standbys == 1 and status.durability == "replicated"
    assert not unsub(server.stub(), "now@example.com").already_existed


def test_primary_kill_loses_no_acknowledged_unsubscribe(start_store, tmp_path):
    with PgCluster(standby=True) as cluster:
        cluster.create_database("app")
        server = _store(start_store, tmp_path, cluster.multi_host_dsn("app"))
        acked: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(n: int) -> None:
            with grpc.insecure_channel(server.target) as channel:
                stub = pb_grpc.UnsubscribeStoreStub(channel)
                i = 0
                while not stop.is_set():
                    address = f"p{n}-{i}@example.com"
                    i += 1
                    try:
                        unsub(stub, address, timeout=5)
                    except grpc.RpcError:
                        continue   # not acknowledged: may or may not exist, either is fine
                    with lock:
                        acked.append(address)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 100:
            assert time.monotonic() < deadline, "writers made no progress:\n" + server.log()
            time.sleep(0.005)
        cluster.kill_primary()          # with writes in flight
        acked_at_kill = len(acked)
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert len(acked) <= acked_at_kill + 4, "acks after the primary died"
        cluster.promote_standby()
        with psycopg.connect(cluster.standby.dsn("app")) as conn:
            stored = {r[0] for r in conn.execute("SELECT address FROM unsubscribe_suppressions")}
        lost = set(acked) - stored
        print(f"\nprimary kill: {len(acked)} acknowledged, {len(lost)} lost, "
              f"{len(stored - set(acked))} committed but unacknowledged")
        assert not lost, f"{len(lost)} acknowledged unsubscribes lost"
        # The store follows the promotion (multi-host DSN), but the new primary has no
        # synchronous standby, so a replicated store must stay not Ready.
        status = _wait_status(server.stub(), lambda s: "synchronous_standby_names" in s.reason)
        assert not status.ready and "synchronous_standby_names" in status.reason
        server.close()


def test_embedded_store_refuses_replicated_durability(start_store, tmp_path):
    server = start_store(["--store", "sqlite", "--sqlite-path", str(tmp_path / "db"),
                          "--durability", "replicated"], wait_serving=False)
    status = _wait_status(server.stub(), lambda s: "SQLite" in s.reason)
    assert not status.ready and not status.highly_available and "SQLite" in status.reason
    assert server.health() == NOT_SERVING


def test_commit_whose_standby_wait_is_cancelled_is_not_acknowledged(cluster, start_store,
                                                                    tmp_path):
    """PostgreSQL lets a COMMIT that is waiting for a synchronous standby be cancelled; the
    commit then "succeeds" locally with only a WARNING. The store must not acknowledge it."""
    dsn_file = tmp_path / "local.dsn"
    dsn_file.write_text(cluster.create_database("app"))
    server = start_store(["--store", "postgres", "--dsn-file", str(dsn_file)], name="local")
    cluster.set_synchronous("ghost")     # a standby that never comes: commits wait forever
    outcome: list = []

    def call() -> None:
        try:
            outcome.append(unsub(server.stub(), "waiting@example.com", timeout=60))
        except grpc.RpcError as exc:
            outcome.append(exc)
    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 60
    pids: list = []
    while not pids and time.monotonic() < deadline:
        pids = cluster.primary.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        time.sleep(0.05)
    assert pids, "the commit never waited for the standby"
    cluster.primary.execute("SELECT pg_cancel_backend(%s)", (pids[0][0],))
    thread.join(60)
    assert isinstance(outcome[0], grpc.RpcError), "acknowledged a commit the standby never saw"
    assert outcome[0].code() == grpc.StatusCode.UNAVAILABLE
    assert "not confirmed by the synchronous standby" in outcome[0].details()


def test_store_resumes_on_the_promoted_standby_after_a_whole_failover(start_store, tmp_path):
    """testkit's `fail_over()` (kill, promote, clone a synchronous standby of the new primary,
    as an HA manager does): the store follows through its multi-host DSN without a restart,
    is Ready again, acknowledges, and every earlier acknowledgement is on the new primary
    with the same sequence (a filter pod's Watch resumes from it)."""
    with PgCluster(standby=True) as cluster:
        cluster.create_database("app")
        server = _store(start_store, tmp_path, cluster.multi_host_dsn("app"))
        stub = server.stub()
        before = {f"before-{i}@example.com": unsub(stub, f"before-{i}@example.com").sequence
                  for i in range(10)}
        old_primary = cluster.primary
        times = cluster.fail_over()
        assert times.killed <= times.promoted <= times.synchronous
        assert cluster.retired == [old_primary] and not old_primary.running
        assert cluster.primary.execute("SELECT pg_is_in_recovery()")[0][0] is False
        deadline = time.monotonic() + 60
        while True:
            try:
                after = unsub(stub, "after@example.com", timeout=5)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert time.monotonic() < deadline, "no acknowledgement after the failover:\n" \
                    + server.log()
                time.sleep(0.2)
        print(f"\nwhole failover: promoted {times.promoted - times.killed:.2f} s, "
              f"synchronous standby {times.synchronous - times.killed:.2f} s, store "
              f"acknowledging {time.time() - times.killed:.2f} s after the kill")
        assert after.sequence == max(before.values()) + 1, "the sequence did not resume"
        rows = dict(cluster.primary.execute(
            "SELECT address, seq FROM unsubscribe_suppressions", dbname="app"))
        assert {a: rows.get(a) for a in before} == before
        status = _wait_status(stub, lambda s: s.ready)
        assert status.ready and status.sync_standbys == 1
        server.close()


def test_one_click_answers_503_in_time_while_a_commit_cannot_finish(cluster, start_store,
                                                                    signing_keys, tmp_path):
    """A mailbox provider's POST must get an answer it can act on (503: try again) before
    its own timeout, never a hang, while the database cannot confirm a commit — here a
    synchronous standby that never comes, which makes PostgreSQL wait forever. Once commits
    go through again, the same link is acknowledged."""
    _, keys, _ = signing_keys
    dsn_file = tmp_path / "local.dsn"
    dsn_file.write_text(cluster.create_database("app"))
    server = start_store(["--store", "postgres", "--dsn-file", str(dsn_file)], name="local",
                         extra_args=["--oneclick-answer-seconds", "2"])
    url = f"{server.http_url}/u/{mint_token(keys, 'hang@example.com', 'news')}"
    cluster.set_synchronous("ghost")     # every COMMIT now waits for a standby that never comes
    started = time.monotonic()
    status, headers = _post(url, timeout=30)
    took = time.monotonic() - started
    assert status == 503, f"answered {status} after {took:.1f} s"
    assert took < 2 + 1.5, f"a 503 only after {took:.1f} s"
    assert headers.get("Retry-After"), headers
    cluster.set_synchronous("")          # commits go through again (the waiting one too)
    deadline = time.monotonic() + 30
    while (status := _post(url, timeout=30)[0]) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200
    rows = cluster.primary.execute("SELECT address FROM unsubscribe_suppressions", dbname="app")
    assert rows == [("hang@example.com",)]


def _post(url: str, timeout: float) -> tuple[int, dict]:
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as rsp:
            return rsp.status, dict(rsp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)
