"""A ClassifyStream opened without a deadline (pipelines keep one open indefinitely) keeps
being answered while other calls compete for the worker's classification turn: waiting for
the turn must not fail on "no deadline" (found while measuring streams for
docs/performance.md: such streams ended in INTERNAL under concurrency). Real server process."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from mailwarden.filter.v1 import filter_pb2_grpc
from testkit.filter import HAM, SPAM, classify_request, mini_policy, write_policy

STREAMS = 4
MESSAGES = 40


def test_streams_without_deadline_are_answered_under_concurrency(servers, tmp_path: Path
                                                                 ) -> None:
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    server = servers(policy_dir, workers=1).wait_serving()
    # a message large enough that classifications overlap across the streams
    big_spam = SPAM + b"Buy viagra now. " * 4000
    results: dict[int, list] = {}

    def pipeline(index: int) -> None:
        with grpc.insecure_channel(server.address) as channel:
            stub = filter_pb2_grpc.FilterStub(channel)
            requests = (classify_request(big_spam if k % 2 else HAM, f"{index}-{k}")
                        for k in range(MESSAGES))
            try:
                results[index] = [r.request_id for r in stub.ClassifyStream(requests)]
            except grpc.RpcError as exc:
                results[index] = [exc.code()]

    threads = [threading.Thread(target=pipeline, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {i: [f"{i}-{k}" for k in range(MESSAGES)] for i in range(STREAMS)}
