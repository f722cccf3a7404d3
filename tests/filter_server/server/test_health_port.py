"""`--health-port` (issue 13 item 3): with the gRPC port behind TLS, the kubelet's gRPC probe
(plaintext) cannot check it; a second, plaintext listener serves grpc.health.v1 and nothing
else, with the same states (NOT_SERVING at SIGTERM), for one worker and for several."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest

from mailwarden.filter.v1 import filter_pb2_grpc
from testkit.filter import HAM, classify_request, wait_for
from testkit.processes import free_port, health_status
from tests.filter_server.server.certs import make_ca, make_cert
from tests.filter_server.server.test_tls import tls_dir


@pytest.mark.parametrize("workers", [1, 2])
def test_health_in_plaintext_beside_a_tls_grpc_port(servers, policy_dir: Path,
                                                   tmp_path: Path, workers: int) -> None:
    certs = tmp_path / "certs"
    ca = make_ca(certs, "ca")
    directory = tls_dir(tmp_path / "tls", make_cert(certs, "server", ca, server=True), ca)
    port = free_port()
    server = servers(policy_dir, "--tls-dir", str(directory), "--require-client-cert",
                     "--health-port", str(port), "--drain-seconds", "3",
                     workers=workers).wait_listening()
    health = f"127.0.0.1:{port}"
    # What the kubelet's probe does: plaintext Check on the health port.
    wait_for(lambda: health_status(health) == "SERVING", 60, "SERVING on the health port")
    assert health_status(health, "mailwarden.filter.v1.Filter") == "SERVING"
    # The TLS port still refuses plaintext, and the health port serves nothing but health.
    assert health_status(server.address) == "UNAVAILABLE"
    with grpc.insecure_channel(health) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            filter_pb2_grpc.FilterStub(channel).Classify(classify_request(HAM), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # SIGTERM: NOT_SERVING at once, there too.
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline and health_status(health) == "SERVING":
        time.sleep(0.1)
    assert health_status(health) == "NOT_SERVING"


def test_a_health_port_that_collides_is_refused(servers, policy_dir: Path) -> None:
    from filter_server.server.config import ServeConfig
    config = ServeConfig(policy_dir=policy_dir, grpc_port=9090, metrics_port=9091,
                         health_port=9091)
    assert any("--health-port must differ" in p for p in config.problems())
    assert any("between 1 and 65535" in p
               for p in ServeConfig(policy_dir=policy_dir, health_port=0).problems())
