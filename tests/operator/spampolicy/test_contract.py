"""Contract between the operator's rendered objects and the filter server.

The filter server (`mailwarden serve`) is started from the rendered Deployment's container
command, args and env, with the rendered ConfigMap laid out the way the kubelet projects it
(`..data` symlink to a timestamped directory), and readiness is checked the way the rendered
probe does it (gRPC health, overall service "", the probe's period and timeout).

Substitutions, all forced by running on a shared test machine instead of in a pod:
the policy mount path becomes a temporary directory, the two ports become ephemeral ones,
`--host 127.0.0.1` is appended (tests bind only to loopback), and the env's fieldRefs get
the values the kubelet would fill in. Everything else is passed exactly as rendered.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from filter_server.server.memory import LIMIT_ENV as MEMORY_LIMIT_ENV
from mailwarden_operator.spampolicy import naming
from mailwarden_operator.spampolicy.policy import build_bundle
from mailwarden_operator.common.render import RenderSettings
from mailwarden_operator.spampolicy.render.configmap import render_configmap
from mailwarden_operator.spampolicy.render.deployment import render_deployment
from mailwarden_operator.spampolicy.spec import with_defaults
from testkit.kubelet import container_env
from tests.operator.conftest import free_port

REPO = Path(__file__).resolve().parents[3]

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(importlib.util.find_spec("filter_server.server") is None,
                       reason="needs the filter server (filter_server/server, `mailwarden "
                       "serve`), built in parallel; this test runs once it is on main"),
]


def _model_bytes() -> bytes:
    from filter_server.bayes.model import BayesModel
    return BayesModel(nspam=3, nham=3, counts={"viagra": (3, 0), "pharmacy": (3, 0),
                                               "meeting": (0, 3), "agenda": (0, 3)}).to_bytes()


def _kubelet_layout(configmap: dict[str, Any], directory: Path) -> Path:
    """Project a ConfigMap as the kubelet does: files in a timestamped directory, `..data`
    pointing at it, and one symlink per key through `..data`."""
    generation = directory / "..2026_01_01_00_00_00.000000001"
    generation.mkdir(parents=True)
    for key, value in (configmap.get("data") or {}).items():
        (generation / key).write_text(value)
    for key, value in (configmap.get("binaryData") or {}).items():
        (generation / key).write_bytes(base64.b64decode(value))
    (directory / "..data").symlink_to(generation.name)
    for key in [*(configmap.get("data") or {}), *(configmap.get("binaryData") or {})]:
        (directory / key).symlink_to(f"..data/{key}")
    return directory


def _metric(port: int, name: str) -> float:
    """The value of an unlabelled sample on the server's /metrics page."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _health(port: int, timeout: float) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_filter_server_runs_from_the_rendered_deployment(tmp_path: Path) -> None:
    body = yaml.safe_load((REPO / "examples" / "spampolicy.yaml").read_text())
    body["metadata"] = {"name": "mail", "namespace": "team", "uid": "u-1"}
    # Short drain and grace keep the test quick; the contract is the same.
    body["spec"]["server"] = {"drainSeconds": 3, "graceSeconds": 2}
    body["spec"] = with_defaults(body["spec"])
    model = _model_bytes()
    bundle = build_bundle(body["spec"]["policy"], lambda name: {
        "binaryData": {"model.json.gz": base64.b64encode(model).decode()}})
    configmap = render_configmap(body, bundle)
    deployment = render_deployment(body, bundle.hash, RenderSettings())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]

    # Mount the policy ConfigMap where the container expects it (here: a temp directory).
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    policy_dir = _kubelet_layout(configmap, tmp_path / "policy")

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    local_ports = {ports["grpc"]: free_port(), ports["metrics"]: free_port()}
    argv = [shutil.which(container["command"][0], path=str(Path(sys.executable).parent))
            or container["command"][0]]
    for arg in container["args"]:
        if arg == mount["mountPath"]:
            arg = str(policy_dir)
        elif arg.isdigit() and int(arg) in local_ports:
            arg = str(local_ports[int(arg)])
        argv.append(arg)
    argv += ["--host", "127.0.0.1"]
    field_values = {"metadata.name": "mail-filter-6d4f-abcde", "metadata.namespace": "team"}
    env = {**os.environ, **container_env(container, field_values)}

    grpc_port = local_ports[naming.GRPC_PORT]
    startup = container["startupProbe"]
    readiness = container["readinessProbe"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        # The startup probe: up to failureThreshold × periodSeconds for the first SERVING.
        deadline = time.monotonic() + startup["failureThreshold"] * startup["periodSeconds"]
        status = "UNKNOWN"
        while time.monotonic() < deadline and proc.poll() is None:
            status = _health(grpc_port, startup["timeoutSeconds"])
            if status == "SERVING":
                break
            time.sleep(startup["periodSeconds"])
        assert status == "SERVING", f"not ready ({status}); server output:\n" + \
            (proc.stdout.read().decode(errors="replace") if proc.poll() is not None else "")
        assert _health(grpc_port, readiness["timeoutSeconds"]) == "SERVING"

        # The pod serves the very policy the operator put in status (same content hash).
        import grpc
        from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = filter_pb2_grpc.FilterStub(channel).Classify(filter_pb2.ClassifyRequest(
                message=b"From: a@example.com\r\nSubject: FREE MONEY!!!\r\n\r\nviagra now\r\n",
                envelope=filter_pb2.Envelope(mail_from="a@example.com",
                                             recipients=["b@example.org"])), timeout=10)
        assert reply.policy_hash == bundle.hash

        # The pod's memory limit reached the server (resourceFieldRef): the budget for
        # messages in flight is sized from it, not the 1 GiB a worker takes without one.
        limit = int(env[MEMORY_LIMIT_ENV])
        assert limit == 512 * 2**20  # the rendered default limit
        budget = _metric(local_ports[naming.METRICS_PORT], "mailwarden_filter_memory_budget_bytes")
        assert 0 < budget < 0.7 * limit, budget

        # SIGTERM (after the preStop pause): readiness fails at once, exit within the
        # grace period the pod gives it.
        os.kill(proc.pid, signal.SIGTERM)  # the kubelet signals the main process only
        stopped = time.monotonic()
        # Within one readiness period (every worker process answers for itself, and a
        # new connection may reach any of them): the probe sees NOT_SERVING.
        unready = None
        while time.monotonic() - stopped < readiness["periodSeconds"] * 3:
            if _health(grpc_port, readiness["timeoutSeconds"]) != "SERVING":
                unready = time.monotonic() - stopped
                break
            time.sleep(0.05)
        assert unready is not None, "still SERVING after SIGTERM"
        print(f"NOT_SERVING {unready:.2f}s after SIGTERM")
        budget = pod["terminationGracePeriodSeconds"] - \
            container["lifecycle"]["preStop"]["sleep"]["seconds"]
        try:
            proc.wait(budget)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server was still running {budget}s after SIGTERM: the kubelet "
                        "would SIGKILL it (terminationGracePeriodSeconds too short)")
        print(f"stopped {time.monotonic() - stopped:.1f}s after SIGTERM (budget {budget}s)")
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
