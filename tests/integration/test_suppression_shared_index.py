"""One suppression index per pod (issue 15): `mailwarden serve --workers 2
--suppression-store` with a real unsubscribe store (embedded SQLite). The supervisor's
builder writes the index file once; both workers map that one file, hold no address in it,
answer Classify by the suppression rule, and follow changes made after the snapshot."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as upb
from testkit.filter import Server, mini_policy, wait_for, write_policy
from testkit.store import StoreProcess

MESSAGE = b"From: news@shop.example\nTo: list@shop.example\nSubject: Weekly\n\nOffers.\n"


KEY_HEX = "a7" * 32


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The fingerprint key the store and the filter pod share (a Secret in a cluster)."""
    path = tmp_path / "fingerprint-key"
    path.write_text(KEY_HEX)
    return path


@pytest.fixture
def store(tmp_path: Path, key_file: Path):
    proc = StoreProcess(tmp_path, ["--store", "sqlite", "--sqlite-path",
                                   str(tmp_path / "store.db"), "--no-one-click",
                                   "--fingerprint-key-file", str(key_file),
                                   # Built empty at start; merged with every change since
                                   # when a pod asks.
                                   "--fingerprint-refresh-changes", "1"])
    yield proc.start()
    proc.close()


def unsubscribe(store: StoreProcess, address: str, scope: str,
                reason: int = upb.UNSUBSCRIBE) -> int:
    return store.stub().Unsubscribe(upb.UnsubscribeRequest(
        address=address, scope=scope, reason=reason, source="test",
        idempotency_key=uuid.uuid4().hex), timeout=10).sequence


def classify_on_new_connections(server: Server, recipients: list[str], scope: str,
                                mail_class: int, connections: int = 8) -> set[tuple[str, ...]]:
    """The answers of several fresh connections (the kernel spreads them over both
    workers)."""
    answers = set()
    request = filter_pb2.ClassifyRequest(
        request_id="t", message=MESSAGE, list_scope=scope, mail_class=mail_class,
        envelope=filter_pb2.Envelope(mail_from="news@shop.example", recipients=recipients))
    for _ in range(connections):
        with grpc.insecure_channel(server.address,
                                   [("grpc.use_local_subchannel_pool", 1)]) as channel:
            response = filter_pb2_grpc.FilterStub(channel).Classify(request, timeout=10)
        assert response.suppression_state == filter_pb2.SUPPRESSION_FRESH
        answers.add(tuple(response.suppressed_recipients))
    return answers


def worker_pids(supervisor_pid: int) -> list[int]:
    children = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text()
    return [int(pid) for pid in children.split()
            if b"filter_server.server.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_two_workers_share_one_index_of_fingerprints(tmp_path: Path, store,
                                                     key_file: Path) -> None:
    unsubscribe(store, "list@x.example", "weekly")
    unsubscribe(store, "global@x.example", "*")
    unsubscribe(store, "complaint@x.example", "weekly", upb.COMPLAINT)
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    index_dir = tmp_path / "index"
    server = Server(tmp_path, policy_dir, ["--suppression-store", store.target,
                                           "--suppression-index-dir", str(index_dir),
                                           "--suppression-key-file", str(key_file),
                                           "--drain-seconds", "0"], workers=2)
    try:
        server.wait_serving()
        wait_for(lambda: server.metric("mailwarden_filter_suppression_cache_fresh") == 1, 60,
                 "both workers' caches to be fresh")
        # The pod started from the store's fingerprint snapshot (one transfer), not from a
        # Watch snapshot of every suppression.
        assert "downloaded the store's fingerprint snapshot: 3 entries" in server.log()
        index_file = index_dir / "suppressions.idx"
        data = index_file.read_bytes()
        assert len(data) == 64 + 8 + 3 * 8  # header, directory, 3 entries
        assert b"x.example" not in data and b"weekly" not in data
        pids = worker_pids(server.process.pid)
        assert len(pids) == 2
        # Each worker maps the file once it is there (the fresh metric may come from the
        # first worker before the second has looked).
        for pid in pids:
            wait_for(lambda pid=pid: str(index_file) in Path(f"/proc/{pid}/maps").read_text(),
                     30,
                     f"worker {pid} to map the shared index")

        everyone = ["list@x.example", "Global@X.example", "complaint@x.example",
                    "fine@x.example"]
        assert classify_on_new_connections(server, everyone, "weekly", filter_pb2.BULK) == \
            {tuple(everyone[:3])}
        assert classify_on_new_connections(server, everyone, "weekly",
                                           filter_pb2.TRANSACTIONAL) == {tuple(everyone[1:3])}
        assert classify_on_new_connections(server, everyone, "other", filter_pb2.BULK) == \
            {("Global@X.example",)}

        # A change after the index was built reaches both workers (each resumed the Watch
        # from the index's sequence).
        unsubscribe(store, "fine@x.example", "weekly")
        wait_for(lambda: classify_on_new_connections(
            server, everyone, "weekly", filter_pb2.BULK) == {tuple(everyone)}, 20,
            "a later unsubscribe to reach both workers")
    finally:
        server.kill()


def test_a_lone_worker_starts_from_the_stores_fingerprint_snapshot(
        tmp_path: Path, store, key_file: Path) -> None:
    """`--workers 1` runs without a supervisor's builder: the worker itself downloads the
    store's fingerprint snapshot, maps it, leaves no file behind, and follows the Watch."""
    unsubscribe(store, "global@x.example", "*")
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    index_dir = tmp_path / "lone"
    server = Server(tmp_path, policy_dir, ["--suppression-store", store.target,
                                           "--suppression-index-dir", str(index_dir),
                                           "--suppression-key-file", str(key_file),
                                           "--drain-seconds", "0"], workers=1)
    try:
        server.wait_serving()
        wait_for(lambda: server.metric("mailwarden_filter_suppression_cache_fresh") == 1, 60,
                 "the cache to be fresh")
        assert "downloaded the store's fingerprint snapshot: 1 entries" in server.log()
        assert list(index_dir.iterdir()) == []
        everyone = ["Global@X.example", "fine@x.example"]
        assert classify_on_new_connections(server, everyone, "weekly", filter_pb2.BULK,
                                           connections=2) == {("Global@X.example",)}
        unsubscribe(store, "fine@x.example", "weekly")
        wait_for(lambda: classify_on_new_connections(
            server, everyone, "weekly", filter_pb2.BULK, connections=1) == {tuple(everyone)},
            20, "a later unsubscribe to reach the worker")
    finally:
        server.kill()


def test_an_unusable_key_file_is_one_clear_line(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    key = tmp_path / "key"
    key.write_text("too-short-secret")
    server = Server(tmp_path, policy_dir, ["--suppression-store", "127.0.0.1:1",
                                           "--suppression-key-file", str(key)], workers=2)
    assert server.wait_exit(30) == 2
    log = server.log()
    assert "--suppression-key-file" in log and "at least 32" in log
    assert "too-short-secret" not in log and "Traceback" not in log
