"""What callers see from a real server: verdicts, hot reload, size limits, malformed MIME,
capacity limits, metrics and reflection."""

from __future__ import annotations

import queue
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import \
    ProtoReflectionDescriptorDatabase

from mailwarden.filter.v1 import filter_pb2
from testkit.filter import HAM, SERVICE, SPAM, classify_request, mini_policy, \
    wait_for, write_policy


def test_verdicts_carry_action_hits_hash_and_request_id(servers, policy_dir: Path) -> None:
    server = servers(policy_dir).wait_serving()
    stub = server.stub()
    spam = stub.Classify(classify_request(SPAM, "req-spam"), timeout=10)
    assert spam.request_id == "req-spam"
    assert filter_pb2.Action.Name(spam.action) == "QUARANTINE"
    hits = {h.name: h.score for h in spam.hits}
    assert hits["SUBJ_MONEY"] == 2.0 and hits["MONEY_AND_PILLS"] == 4.0
    assert {"BODY_VIAGRA", "URI_IP", "SENDER_DIGITS", "BLOCKLIST_DOMAIN"} <= set(hits)
    assert spam.spam_probability == -1  # this policy has no model
    assert spam.suppression_state == filter_pb2.SUPPRESSION_DISABLED
    ham = stub.Classify(classify_request(HAM, "req-ham"), timeout=10)
    assert filter_pb2.Action.Name(ham.action) == "ACCEPT" and not ham.hits
    assert ham.policy_hash == spam.policy_hash and len(ham.policy_hash) == 16


def test_stream_answers_in_request_order(servers, policy_dir: Path) -> None:
    server = servers(policy_dir).wait_serving()
    messages = [SPAM if i % 3 == 0 else HAM for i in range(30)]
    requests = (classify_request(m, f"id-{i}") for i, m in enumerate(messages))
    responses = list(server.stub().ClassifyStream(requests, timeout=30))
    assert [r.request_id for r in responses] == [f"id-{i}" for i in range(30)]
    assert [r.action == filter_pb2.QUARANTINE for r in responses] == \
        [m is SPAM for m in messages]


def test_hot_reload_swaps_good_policies_and_keeps_serving_through_bad_ones(
        servers, policy_dir: Path) -> None:
    server = servers(policy_dir, "--policy-poll-seconds", "0.2").wait_serving()
    first = server.classify(HAM).policy_hash

    write_policy(policy_dir, mini_policy(2))
    second = wait_for(lambda: (h := server.classify(HAM).policy_hash) != first and h, 30,
                      "the new policy to be served")
    assert server.metric("mailwarden_filter_policy_reloads_total") == 1
    assert server.metric("mailwarden_filter_policy_info", hash=second) == 1
    assert server.metric("mailwarden_filter_policy_info", hash=first) == 0

    write_policy(policy_dir, "rules:\n- {name: BAD, target: body, pattern: 'a(?=b)', "
                             "score: 1}\n")
    wait_for(lambda: server.metric("mailwarden_filter_policy_reload_failures_total") == 1,
             30, "the reload failure to be counted")
    assert server.classify(SPAM).policy_hash == second, "the old policy keeps serving"
    assert server.health() == "SERVING"
    assert "new policy rejected" in server.log() and "rules[0].pattern" in server.log()

    write_policy(policy_dir, mini_policy(3))  # and a fixed one is picked up again
    wait_for(lambda: server.classify(HAM).policy_hash not in (first, second), 30,
             "the fixed policy to be served")


def test_message_size_limit_gives_resource_exhausted(servers, policy_dir: Path) -> None:
    limit = 100_000
    server = servers(policy_dir, "--max-message-bytes", str(limit)).wait_serving()

    def message(size: int) -> bytes:
        head = b"From: a@example.com\r\nSubject: big\r\n\r\n"
        return head + b"x" * (size - len(head))

    assert server.classify(message(limit)).action  # exactly at the limit: fine
    for size in (limit + 1, 2_000_000):  # over it (checked by us / by the gRPC core)
        with pytest.raises(grpc.RpcError) as info:
            server.classify(message(size))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, size
    with pytest.raises(grpc.RpcError) as info:
        server.classify(message(limit + 1))
    assert f"at most {limit}" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        server.classify(b"")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message is empty" in info.value.details()
    assert server.health() == "SERVING"


def test_the_announced_message_size_is_held_to(servers, policy_dir: Path) -> None:
    """`mailwarden.client` announces each message's size (mailwarden-message-bytes) so the
    server reserves memory for that message rather than for the largest one: an oversized
    announcement is refused before the message is received, and a message larger than
    announced is refused (it would have slipped past the memory budget)."""
    from mailwarden.client import MESSAGE_BYTES_METADATA
    from mailwarden.filter.v1 import filter_pb2_grpc

    limit = 100_000
    server = servers(policy_dir, "--max-message-bytes", str(limit)).wait_serving()
    with grpc.insecure_channel(server.address) as channel:
        stub = filter_pb2_grpc.FilterStub(channel)

        def classify(announced: int, message: bytes = HAM) -> grpc.RpcError | None:
            try:
                stub.Classify(classify_request(message), timeout=10,
                              metadata=((MESSAGE_BYTES_METADATA, str(announced)),))
            except grpc.RpcError as exc:
                return exc
            return None

        assert classify(len(HAM)) is None
        assert classify(limit) is None                  # announcing more is fine
        refused = classify(limit + 1)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"message is {limit + 1} bytes; this server accepts at most {limit}" in \
            refused.details()
        lied = classify(10)
        assert lied.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"message is {len(HAM)} bytes but the call announced 10" in lied.details()
    assert server.health() == "SERVING"


MALFORMED = [
    # multipart without its boundary parameter
    b"From: a@example.com\r\nContent-Type: multipart/mixed\r\n\r\n--x\r\nhello\r\n--x--\r\n",
    # boundary declared, never used; garbage base64
    b"Content-Type: multipart/alternative; boundary=\"q\"\r\n\r\nno parts at all\r\n",
    b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!***%%%\r\n",
    # no header/body separator, binary junk, NUL bytes, lone CRs
    b"\x00\xff\xfe garbage \r\r\r\n\x00\x01\x02",
    b"Subject: =?unknown-charset?B?////?=\r\nContent-Type: text/html; charset=bogus\r\n\r\n"
    b"<a href='http://[::1'>x</a><script>",
    b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\nContent-Type: "
    b"multipart/mixed; boundary=a\r\n\r\n" * 200,
]


def test_malformed_mime_gets_a_normal_verdict(servers, policy_dir: Path) -> None:
    server = servers(policy_dir).wait_serving()
    for message in MALFORMED:
        response = server.classify(message)
        assert filter_pb2.Action.Name(response.action) in ("ACCEPT", "TAG", "QUARANTINE",
                                                           "REJECT")
    assert "MIME_MALFORMED" in {h.name for h in server.classify(MALFORMED[0]).hits}
    assert server.health() == "SERVING" and server.process.poll() is None


def test_capacity_limit_answers_resource_exhausted_instead_of_hanging(
        servers, policy_dir: Path) -> None:
    server = servers(policy_dir, "--max-concurrent-rpcs", "2").wait_serving()
    streams = []
    for n in range(2):  # two open streams occupy both slots
        requests: queue.Queue = queue.Queue()
        call = server.stub().ClassifyStream(iter(requests.get, None), timeout=60)
        requests.put(classify_request(HAM, f"s{n}"))
        assert next(call).request_id == f"s{n}"
        streams.append((requests, call))
    with pytest.raises(grpc.RpcError) as info:
        server.classify(HAM, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at capacity" in info.value.details()
    assert server.health() == "SERVING", "health checks keep working at capacity"
    assert server.metric("mailwarden_filter_capacity_rejections_total") == 1

    requests, call = streams.pop()
    requests.put(None)
    assert list(call) == [] and call.code() == grpc.StatusCode.OK
    wait_for(lambda: server.metric("mailwarden_filter_in_flight_requests") == 1, 10,
             "the slot to be released")
    assert server.classify(HAM).action
    streams[0][0].put(None)


def test_metrics_endpoint(servers, policy_dir: Path) -> None:
    server = servers(policy_dir).wait_serving()
    hashes = {server.classify(SPAM if i % 2 else HAM).policy_hash for i in range(10)}
    with pytest.raises(grpc.RpcError):
        server.classify(b"")
    text = server.metrics_text()
    assert "# TYPE mailwarden_filter_classify_duration_seconds histogram" in text
    assert "# TYPE mailwarden_filter_requests_total counter" in text
    m = server.metric
    assert m("mailwarden_filter_requests_total", method="Classify", code="OK") == 10
    assert m("mailwarden_filter_requests_total", method="Classify",
             code="INVALID_ARGUMENT") == 1
    assert m("mailwarden_filter_verdicts_total", action="ACCEPT") == 5
    assert m("mailwarden_filter_verdicts_total", action="QUARANTINE") == 5
    assert m("mailwarden_filter_classify_duration_seconds_count", method="Classify") == 10
    assert m("mailwarden_filter_classify_duration_seconds_bucket", method="Classify",
             le="+Inf") == 10
    assert m("mailwarden_filter_in_flight_requests") == 0
    assert m("mailwarden_filter_serving_workers") == 1
    assert m("mailwarden_filter_policy_info", hash=hashes.pop()) == 1
    assert m("mailwarden_filter_policy_loaded_timestamp_seconds") > 1.7e9
    assert m("mailwarden_filter_policy_rules") == 5
    assert m("mailwarden_filter_policy_reload_failures_total") == 0


def test_reflection_lists_the_services(servers, policy_dir: Path) -> None:
    server = servers(policy_dir).wait_serving()
    database = ProtoReflectionDescriptorDatabase(server.channel())
    services = database.get_services()
    assert SERVICE in services and "grpc.health.v1.Health" in services
    found = database.FindFileContainingSymbol("mailwarden.filter.v1.ClassifyRequest")
    assert "mailwarden/filter/v1/filter.proto" in found.name


def test_deadline_ends_a_stream_and_frees_its_slot(servers, policy_dir: Path) -> None:
    server = servers(policy_dir, "--max-concurrent-rpcs", "1").wait_serving()
    requests: queue.Queue = queue.Queue()
    call = server.stub().ClassifyStream(iter(requests.get, None), timeout=1.0)
    requests.put(classify_request(SPAM, "in-time"))
    assert next(call).request_id == "in-time"
    with pytest.raises(grpc.RpcError) as info:
        next(call)  # nothing more is sent; the deadline ends the call
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    requests.put(None)
    # The expired stream gave its slot back: with a capacity of one, a call fits again.
    wait_for(lambda: server.metric("mailwarden_filter_in_flight_requests") == 0, 10,
             "the slot to be released")
    assert server.classify(SPAM).action
