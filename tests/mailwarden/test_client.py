"""Client construction (targets, options) and the `mailwarden classify` CLI against a real
server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from filter_server.server.config import ServeConfig
from filter_server.server.worker import server_options
from mailwarden.client import (
    ClassifyError,
    FilterClient,
    normalize_target,
    service_config,
    target_for,
)
from mailwarden.filter.v1 import filter_pb2
from mailwarden.wire import FILTER_SERVICE
from testkit.filter import HAM, SPAM


def test_targets() -> None:
    assert target_for(["127.0.0.1:1", "10.0.0.2:2"]) == "ipv4:127.0.0.1:1,10.0.0.2:2"
    assert target_for(["[::1]:5", "[fd00::2]:6"]) == "ipv6:[::1]:5,[fd00::2]:6"
    assert target_for(["filter.mail.svc:50051"]) == "dns:///filter.mail.svc:50051"
    assert normalize_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert normalize_target("dns:///x:1") == "dns:///x:1"
    with pytest.raises(ValueError, match="must be IP literals"):
        target_for(["a.example:1", "b.example:1"])
    with pytest.raises(ValueError, match="not host:port"):
        target_for(["127.0.0.1"])
    with pytest.raises(ValueError, match="mix of IPv4 and IPv6"):
        target_for(["127.0.0.1:1", "[::1]:1"])
    with pytest.raises(ValueError, match="exactly one of"):
        FilterClient()


def test_service_config_balances_retries_and_health_checks() -> None:
    config = json.loads(service_config())
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": "mailwarden.filter.v1.Filter"}
    retry = config["methodConfig"][0]["retryPolicy"]
    assert retry["retryableStatusCodes"] == ["UNAVAILABLE"] and retry["maxAttempts"] == 4


def test_stream_helper(servers, policy_dir: Path) -> None:
    server = servers(policy_dir).wait_serving()
    with FilterClient(server.address) as client:
        items = [SPAM, HAM, client.request(SPAM, request_id="mine")]
        responses = list(client.classify_stream(items))
    assert [r.action for r in responses][:2] != [0, 0]
    assert responses[2].request_id == "mine"
    assert responses[0].score > responses[1].score


def test_classify_cli(servers, policy_dir: Path, tmp_path: Path) -> None:
    server = servers(policy_dir).wait_serving()
    (tmp_path / "spam.eml").write_bytes(SPAM)
    (tmp_path / "ham.eml").write_bytes(HAM)
    cli = [sys.executable, "-m", "mailwarden.cli", "classify", "--target", server.address]
    text = subprocess.run([*cli, str(tmp_path / "spam.eml"), str(tmp_path / "ham.eml")],
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    spam_line, ham_line = text.stdout.splitlines()
    assert spam_line.startswith(f"{tmp_path / 'spam.eml'}: QUARANTINE score=12.00 policy=")
    assert "hits: MONEY_AND_PILLS +4.00, BODY_VIAGRA +3.00, SUBJ_MONEY +2.00 (+3 more)" \
        in spam_line
    assert ham_line.startswith(f"{tmp_path / 'ham.eml'}: ACCEPT score=0.00")

    js = subprocess.run([*cli, "--json", str(tmp_path / "spam.eml")], capture_output=True,
                        text=True, timeout=60)
    verdict = json.loads(js.stdout)
    assert verdict["action"] == "QUARANTINE" and verdict["file"].endswith("spam.eml")
    assert {h["name"] for h in verdict["hits"]} >= {"SUBJ_MONEY", "BODY_VIAGRA"}
    assert verdict["suppression_state"] == "SUPPRESSION_DISABLED"

    missing = subprocess.run([*cli, str(tmp_path / "nope.eml"), str(tmp_path / "ham.eml")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert "nope.eml: cannot read: No such file or directory" in missing.stderr
    assert "ham.eml: ACCEPT" in missing.stdout, "the other files are still classified"

    none = subprocess.run([sys.executable, "-m", "mailwarden.cli", "classify", "x.eml"],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k != "MAILWARDEN_TARGET"})
    assert none.returncode == 2 and "--target is required" in none.stderr


def test_a_callers_channel_option_replaces_the_clients_own(servers, policy_dir: Path) -> None:
    """gRPC keeps the first of two options with one key: appended after FilterClient's own,
    a caller's keepalive or size limit was silently ignored."""
    server = servers(policy_dir).wait_serving()
    with FilterClient(server.address,
                      options=[("grpc.max_send_message_length", 4096)]) as client:
        assert client.classify(HAM).action is not None
        with pytest.raises(ClassifyError) as refused:
            client.classify(HAM + b"x" * 8192)
    assert "RESOURCE_EXHAUSTED" in str(refused.value)



def test_a_pinging_client_is_not_sent_goaway_too_many_pings(tmp_path: Path) -> None:
    """A call on which nothing moves for seconds (a replica busy with a burst) makes the
    client ping: KEEPALIVE_TIME_MS after the last frame read, then once a second, gRPC
    core's floor for a client that receives nothing. A server that finds pings too
    frequent sends GOAWAY too_many_pings, which fails every call on the connection.
    `max_pings_without_data` 0 lifts the client's own cap of two pings per request sent,
    so the server's limit (the filter server's own channel options) is what is tested.
    It failed while those options spelled the limit's key wrong: gRPC ignored it and
    kept its default of one ping per 5 minutes."""
    quiet_seconds = 4.5
    # Not `mailwarden serve`: its calls are never silent for seconds; the gRPC server
    # here runs the filter server's channel options, which are what decide.
    options = [o for o in server_options(ServeConfig(policy_dir=tmp_path))
               if o[0] != "grpc.so_reuseport"]

    def slow_classify(request: filter_pb2.ClassifyRequest, _context: grpc.ServicerContext
                      ) -> filter_pb2.ClassifyResponse:
        time.sleep(quiet_seconds)
        return filter_pb2.ClassifyResponse(request_id=request.request_id)

    handler = grpc.method_handlers_generic_handler(FILTER_SERVICE, {
        "Classify": grpc.unary_unary_rpc_method_handler(
            slow_classify, request_deserializer=filter_pb2.ClassifyRequest.FromString,
            response_serializer=filter_pb2.ClassifyResponse.SerializeToString)})
    server = grpc.server(ThreadPoolExecutor(4), options=options)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with FilterClient(f"127.0.0.1:{port}", max_attempts=1, health_check=False,
                          deadline=30, options=[("grpc.http2.max_pings_without_data", 0)]
                          ) as client:
            started = time.monotonic()
            reply = client.classify(HAM, request_id="quiet")
            assert reply.request_id == "quiet"
            assert time.monotonic() - started >= quiet_seconds
    finally:
        server.stop(0)
