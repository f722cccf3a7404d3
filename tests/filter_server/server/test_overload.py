"""Above capacity the server answers RESOURCE_EXHAUSTED at once — it never leaves calls to
time out in a queue — and counts every rejection it makes in its metrics.

Found by the fault suite's surge scenario: with large messages offered faster than one
worker classifies them, gRPC's polling thread (starved of the interpreter lock by dozens of
classifying threads) stopped taking calls in; they waited unseen in the gRPC core until
their deadlines passed (DEADLINE_EXCEEDED), and the capacity metric read 0."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import grpc

from mailwarden.filter.v1 import filter_pb2_grpc
from testkit.filter import HAM, classify_request, outcomes

# A 512 KiB message: tens of milliseconds of classification each.
LARGE = HAM + b"Shall we meet at noon? We could walk to the park afterwards.\r\n" * 8500


def test_calls_beyond_capacity_get_resource_exhausted_not_a_timeout(servers,
                                                                    policy_dir: Path) -> None:
    server = servers(policy_dir).wait_serving()
    deadline = 3.0
    with grpc.insecure_channel(server.address) as channel:
        stub = filter_pb2_grpc.FilterStub(channel)
        assert stub.Classify(classify_request(LARGE), timeout=30).policy_hash  # warm up
        # About 10 s of work at once, against a 3 s deadline each.
        counted = Counter(outcomes([
            stub.Classify.future(classify_request(LARGE, f"r{i}"), timeout=deadline)
            for i in range(250)]))
    assert set(counted) <= {"OK", "RESOURCE_EXHAUSTED"}, counted
    assert counted["OK"] > 0 and counted["RESOURCE_EXHAUSTED"] > 0, counted
    # The server's own admission control made (nearly) every rejection, so it is counted;
    # the gRPC framework's backstop limit may take a few when a burst lands at once.
    rejected = server.metric("mailwarden_filter_capacity_rejections_total")
    assert rejected >= 0.8 * counted["RESOURCE_EXHAUSTED"], (rejected, counted)
    assert server.health() == "SERVING"
