"""A filter's memory budget leaves room for its suppression cache (issue 20, item 2). The
budget was sized once the policy loaded, and the cache, loaded from the store's Watch in
the background, came on top of it: with a large suppression list a burst of large messages
took the worker past its limit. Now the budget shrinks as the cache grows.

A real unsubscribe store (embedded SQLite) holding 200,000 suppressions, two real filter
workers with a 384 MiB limit: one following the store, one not (the reference)."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from mailwarden.fingerprint_index import ENTRY_BYTES
from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as upb
from testkit.filter import Server, mini_policy, outcomes, wait_for, write_policy
from tests.filter_server.server.test_memory import PeakRss
from testkit.store import RESUBSCRIBE_TOKEN, StoreProcess

MIB = 1024 * 1024
SUPPRESSIONS = 200_000
LIMIT = 384 * MIB


@pytest.fixture
def store(tmp_path: Path):
    admin_token = tmp_path / "admin-token"
    admin_token.write_text(RESUBSCRIBE_TOKEN)
    proc = StoreProcess(tmp_path, ["--store", "sqlite", "--sqlite-path",
                                   str(tmp_path / "store.db"), "--no-one-click",
                                   "--admin-token-file", str(admin_token)]).start()
    data = b"address\n" + b"".join(f"reader{i:07d}@example{i % 997}.com\n".encode()
                                   for i in range(SUPPRESSIONS))
    step = 1 << 20
    chunks = [upb.ImportChunk(format=upb.CSV, default_scope="*", data=data[:step])] + \
        [upb.ImportChunk(data=data[i:i + step]) for i in range(step, len(data), step)]
    assert proc.stub().Import(
        iter(chunks), timeout=300,
        metadata=(("authorization", f"Bearer {RESUBSCRIBE_TOKEN}"),)).inserted == SUPPRESSIONS
    yield proc
    proc.close()


def test_the_budget_counts_the_suppression_cache(tmp_path: Path, store) -> None:
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    args = ["--memory-limit-bytes", str(LIMIT)]
    servers = [Server(tmp_path, policy_dir, args + ["--suppression-store", store.target], 1),
               Server(tmp_path, policy_dir, args, 1)]
    try:
        following, reference = (server.wait_serving() for server in servers)
        wait_for(lambda: following.metric("mailwarden_filter_suppression_cache_entries")
                 == SUPPRESSIONS, 120, "the suppression cache to load")
        cache = SUPPRESSIONS * ENTRY_BYTES  # a lone worker's private index
        wait_for(lambda: following.metric("mailwarden_filter_memory_budget_bytes")
                 <= reference.metric("mailwarden_filter_memory_budget_bytes") - cache * 0.9,
                 10, "the budget to leave room for the cache")
        budgets = [server.metric("mailwarden_filter_memory_budget_bytes")
                   for server in (following, reference)]
        print(f"\nbudget {budgets[0] / MIB:.0f} MiB with {SUPPRESSIONS:,} suppressions "
              f"({cache / MIB:.0f} MiB), {budgets[1] / MIB:.0f} MiB without")
        assert budgets[1] - budgets[0] < cache + 24 * MIB

        # A burst of large messages stays within the limit.
        message = b"From: big@example.com\r\nSubject: figures\r\n\r\n" + \
            b"Shall we meet at noon? " * (16 * MIB // 23)
        request = filter_pb2.ClassifyRequest(request_id="big", message=message, envelope=
                                             filter_pb2.Envelope(recipients=["a@example.com"]))
        codes: list[str] = []
        lock = threading.Lock()

        def send(i: int) -> None:
            with grpc.insecure_channel(following.address, [
                    ("grpc.max_send_message_length", -1),
                    ("grpc.primary_user_agent", f"c{i}")]) as channel:
                got = outcomes([filter_pb2_grpc.FilterStub(channel).Classify.future(
                    request, timeout=20) for _ in range(4)])
            with lock:
                codes.extend(got)

        with PeakRss(following.process.pid) as rss:
            threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
        counted = {code: codes.count(code) for code in set(codes)}
        print(f"24 messages of 16 MiB: peak RSS {rss.peak / MIB:.0f} MiB (limit "
              f"{LIMIT // MIB}); {counted}")
        assert rss.peak < LIMIT
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and counted.get("OK", 0) >= 4
    finally:
        for server in servers:
            server.kill()
