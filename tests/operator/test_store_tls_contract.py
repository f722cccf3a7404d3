"""Filter pods and an UnsubscribeStore over mutual TLS, both run from what the operator
renders (issue 20 item 8): a store with `spec.tls.requireClientCert` and a SpamPolicy that
references it. Both are real processes started from the rendered containers' command and
args, with the Secrets laid out as the kubelet mounts them (see the contract tests in
spampolicy/ and unsubscribestore/ for the substitutions: temporary directories for mount
paths, loopback ports; the store's Service name becomes `localhost`, which the test server
certificate names).

The filter pod starts before its client Secret exists (it is mounted optional), then
gets one with the CA only: the store refuses it, its answers say SUPPRESSION_STALE and name nobody; once
the certificate appears it connects on its own and reports the suppression FRESH.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from mailwarden_operator.common.render import RenderSettings
from mailwarden_operator.spampolicy import naming as policy_naming
from mailwarden_operator.spampolicy.policy import build_bundle
from mailwarden_operator.spampolicy.render.configmap import render_configmap
from mailwarden_operator.spampolicy.render.deployment import (
    render_deployment,
    store_client_tls_secret,
)
from mailwarden_operator.spampolicy.spec import with_defaults as policy_defaults
from mailwarden_operator.unsubscribestore import naming as store_naming
from testkit.kubelet import container_env, project_configmap
from tests.filter_server.server.certs import Cert, make_ca, make_cert
from tests.operator.conftest import free_port
from tests.operator.unsubscribestore.test_contract import Pod, store

REPO = Path(__file__).resolve().parents[2]
READER = "reader@example.com"
pytestmark = pytest.mark.timeout(180)


def _tls_files(ca: Cert, cert: Cert | None) -> dict[str, bytes]:
    files = {"ca.crt": ca.crt.read_bytes()}
    if cert is not None:
        files.update({"tls.crt": cert.crt.read_bytes(), "tls.key": cert.key.read_bytes()})
    return files


def _code(call: Any) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return None


def _check(channel: grpc.Channel) -> grpc.StatusCode | None:
    stub = pb_grpc.UnsubscribeStoreStub(channel)
    return _code(lambda: stub.Check(pb.CheckRequest(addresses=[READER], scope="news"),
                                    timeout=5))


class FilterPod:
    """The rendered filter container as a local process."""

    def __init__(self, policy: dict[str, Any], deployment: dict[str, Any],
                 store_grpc_port: int, root: Path) -> None:
        bundle = build_bundle(policy["spec"]["policy"], lambda name: None)
        pod = deployment["spec"]["template"]["spec"]
        self.container = pod["containers"][0]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: root / m["name"] for m in self.container["volumeMounts"]}
        for path in mounts.values():
            path.mkdir(exist_ok=True)
        project_configmap(render_configmap(policy, bundle), mounts[policy_naming.POLICY_MOUNT])
        self.tls_dir = mounts[policy_naming.SUPPRESSION_TLS_MOUNT]
        assert volumes["suppression-tls"]["secret"]["optional"] is True
        self.grpc_port, metrics_port = free_port(), free_port()
        local = {str(policy_naming.GRPC_PORT): str(self.grpc_port),
                 str(policy_naming.METRICS_PORT): str(metrics_port)}
        target = store_naming.grpc_target("sup", "team")
        self.argv = [shutil.which("mailwarden", path=str(Path(sys.executable).parent))
                     or "mailwarden"]
        for arg in self.container["args"]:
            if arg in mounts:
                arg = str(mounts[arg])
            elif arg == target:  # the Service name, as the store's certificate names it
                arg = f"localhost:{store_grpc_port}"
            self.argv.append(local.get(arg, arg))
        self.argv += ["--host", "127.0.0.1", "--suppression-stale-after", "3"]
        self.env = {**os.environ, **container_env(
            self.container, {"metadata.name": "mail-filter-x", "metadata.namespace": "team"})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def classify(self) -> filter_pb2.ClassifyResponse:
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            return filter_pb2_grpc.FilterStub(channel).Classify(filter_pb2.ClassifyRequest(
                message=b"From: news@example.org\r\nSubject: weekly\r\n\r\nhello\r\n",
                envelope=filter_pb2.Envelope(mail_from="news@example.org",
                                             recipients=[READER, "other@example.com"]),
                mail_class=filter_pb2.BULK, list_scope="news"), timeout=10)

    def wait_classify(self, budget: float) -> filter_pb2.ClassifyResponse:
        deadline = time.monotonic() + budget
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.output()
            try:
                return self.classify()
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def output(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def test_filter_pods_receive_suppressions_over_mutual_tls_and_nothing_without_a_cert(
        tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ca = make_ca(pki, "ca")
    server_cert = make_cert(pki, "store", ca, server=True)
    filter_cert = make_cert(pki, "filter", ca, server=False)
    other_ca = make_ca(pki, "other-ca")
    stranger = make_cert(pki, "stranger", other_ca, server=False)

    owner = store("sup", storage={"type": "embedded"}, replicas={"min": 1, "max": 1},
                  tls={"secretName": "sup-tls", "requireClientCert": True})
    (tmp_path / "store").mkdir()
    store_pod = Pod(owner, {"sup-tls": _tls_files(ca, server_cert)}, tmp_path / "store")
    body = yaml.safe_load((REPO / "examples" / "spampolicy.yaml").read_text())
    body["metadata"] = {"name": "mail", "namespace": "team", "uid": "u-1"}
    body["spec"].update(unsubscribeStoreRef={"name": "sup"},
                        server={"workers": 1, "drainSeconds": 1, "graceSeconds": 1})
    body["spec"]["policy"].pop("model", None)  # no model ConfigMap needed here
    policy = {**body, "spec": policy_defaults(body["spec"])}
    client_secret = store_client_tls_secret(policy, owner)
    assert client_secret == "sup-unsubscribe-client-tls"
    deployment = render_deployment(policy, "h", RenderSettings(), client_secret)
    (tmp_path / "filter").mkdir()
    filter_pod = FilterPod(policy, deployment, store_pod.named_ports["grpc"],
                           tmp_path / "filter")
    try:
        store_pod.run_init_containers()
        proc = store_pod.start()
        status, text = store_pod.wait_probe("readinessProbe", proc, budget=30)
        assert status == 200, f"store not ready: {text}"
        address = f"localhost:{store_pod.named_ports['grpc']}"

        # The store admits only clients with a certificate from its CA.
        with grpc.insecure_channel(address) as channel:
            assert _check(channel) == grpc.StatusCode.UNAVAILABLE
        for cert in (None, stranger):
            credentials = grpc.ssl_channel_credentials(
                ca.crt.read_bytes(), *(reversed(cert.pem()) if cert else ()))
            with grpc.secure_channel(address, credentials) as channel:
                assert _check(channel) == grpc.StatusCode.UNAVAILABLE
        good = grpc.ssl_channel_credentials(ca.crt.read_bytes(), filter_cert.key.read_bytes(),
                                            filter_cert.crt.read_bytes())
        with grpc.secure_channel(address, good) as channel:
            pb_grpc.UnsubscribeStoreStub(channel).Unsubscribe(pb.UnsubscribeRequest(
                address=READER, scope="news", reason=pb.UNSUBSCRIBE, source="test"),
                timeout=10)

        # The client Secret does not exist yet (the optional volume is empty), then holds
        # only the CA (no client certificate, refused by the store): the pod classifies
        # all along, but says its suppression data is not current and names nobody.
        filter_pod.start()
        first = filter_pod.wait_classify(budget=90)
        assert first.action != filter_pb2.ACTION_UNSPECIFIED
        for files in ({}, _tls_files(ca, None)):
            for name, data in files.items():
                (filter_pod.tls_dir / name).write_bytes(data)
            time.sleep(4)  # past --suppression-stale-after: several failed attempts
            refused = filter_pod.classify()
            assert refused.suppression_state == filter_pb2.SUPPRESSION_STALE
            assert list(refused.suppressed_recipients) == []

        # The certificate arrives (the kubelet updates the optional Secret's files): the
        # next reconnection presents it, no restart.
        for name, data in _tls_files(ca, filter_cert).items():
            (filter_pod.tls_dir / name).write_bytes(data)
        deadline = time.monotonic() + 30
        reply = refused
        while time.monotonic() < deadline:
            reply = filter_pod.classify()
            if reply.suppression_state == filter_pb2.SUPPRESSION_FRESH:
                break
            time.sleep(0.5)
        assert reply.suppression_state == filter_pb2.SUPPRESSION_FRESH, filter_pod.output()
        assert list(reply.suppressed_recipients) == [READER]
    finally:
        filter_pod.stop()
        store_pod.stop()
