"""Contract between the operator's rendered store objects and `mailwarden unsubscribe-server`.

The migration init container and then the server are started from exactly the command and
args of the rendered Deployment, with the volumes laid out as the kubelet mounts them (the
rendered signing-key and fingerprint-key Secrets with their generated keys, the DSN Secret's key under its item
path, the data directory), and probed the way the rendered probes do (paths, port, period,
failure threshold). A real PostgreSQL (testkit/pg.py) and the embedded SQLite store.

Substitutions, all forced by running on a shared test machine instead of in a pod: each
mount path becomes a temporary directory, the listen addresses `[::]:<port>` become
loopback addresses on ephemeral ports. Everything else is passed exactly as rendered.
"""

from __future__ import annotations

import base64
import os
import secrets as random_secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from mailwarden.tokens import generate_key, load_keyring, mint_token
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from mailwarden.unsubscribe.v1 import unsubscribe_pb2_grpc as pb_grpc
from mailwarden_operator.common.render import RenderSettings
from mailwarden_operator.unsubscribestore.render.deployment import render_store_deployment
from mailwarden_operator.unsubscribestore.render.secret import (
    render_fingerprint_key_secret,
    render_signing_key_secret,
)
from mailwarden_operator.unsubscribestore.spec import with_defaults
from tests.operator.conftest import free_port
from testkit.pg import PgCluster, PgUnavailable

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgCluster]:
    try:
        cluster = PgCluster(fsync=False)
    except PgUnavailable as exc:
        pytest.fail(f"{exc} — the contract test needs a real PostgreSQL")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


class Pod:
    """The rendered pod's containers run as local processes over a kubelet-like layout."""

    def __init__(self, owner: dict[str, Any], secrets: dict[str, dict[str, bytes]],
                 root: Path) -> None:
        self.owner = owner
        for key_secret in (render_signing_key_secret(owner, generate_key()),
                           render_fingerprint_key_secret(owner, random_secrets.token_hex(32))):
            secrets = {**secrets, key_secret["metadata"]["name"]: {
                k: base64.b64decode(v) for k, v in key_secret["data"].items()}}
        self.deployment = render_store_deployment(owner, RenderSettings(), {})
        self.spec = self.deployment["spec"]["template"]["spec"]
        self.volumes: dict[str, Path] = {}
        for volume in self.spec["volumes"]:
            directory = root / volume["name"]
            directory.mkdir()
            if "secret" in volume:
                data = secrets[volume["secret"]["secretName"]]
                items = volume["secret"].get("items") or [{"key": k, "path": k}
                                                          for k in data]
                for item in items:
                    (directory / item["path"]).write_bytes(data[item["key"]])
            self.volumes[volume["name"]] = directory
        server = self.spec["containers"][0]
        self.ports = {p["containerPort"]: free_port() for p in server["ports"]}
        self.named_ports = {p["name"]: self.ports[p["containerPort"]]
                            for p in server["ports"]}
        self.procs: list[subprocess.Popen[bytes]] = []

    def argv(self, container: dict[str, Any]) -> list[str]:
        mounts = sorted(((m["mountPath"], self.volumes[m["name"]])
                         for m in container["volumeMounts"]), key=lambda m: -len(m[0]))
        out = [shutil.which(container["command"][0], path=str(Path(sys.executable).parent))
               or container["command"][0]]
        for arg in container["args"]:
            for mount_path, local in mounts:
                if arg == mount_path or arg.startswith(mount_path + "/"):
                    arg = str(local) + arg[len(mount_path):]
                    break
            if arg.startswith("[::]:") and int(arg.rsplit(":", 1)[1]) in self.ports:
                arg = f"127.0.0.1:{self.ports[int(arg.rsplit(':', 1)[1])]}"
            out.append(arg)
        return out

    def run_init_containers(self) -> list[str]:
        outputs = []
        for container in self.spec["initContainers"]:
            done = subprocess.run(self.argv(container), capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, f"init container {container['name']} failed:\n" \
                + done.stdout + done.stderr
            outputs.append(done.stdout)
        return outputs

    def start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.argv(self.spec["containers"][0]), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def probe(self, name: str) -> tuple[int, str]:
        probe = self.spec["containers"][0][name]
        url = f"http://127.0.0.1:{self.named_ports[probe['httpGet']['port']]}" \
              f"{probe['httpGet']['path']}"
        try:
            with urllib.request.urlopen(url, timeout=probe["timeoutSeconds"]) as rsp:
                return rsp.status, rsp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, "connection refused"

    def wait_probe(self, name: str, proc: subprocess.Popen[bytes],
                   budget: float | None = None) -> tuple[int, str]:
        """Probe like the kubelet: every periodSeconds, up to failureThreshold times (or for
        `budget` seconds); returns the last answer."""
        probe = self.spec["containers"][0][name]
        deadline = time.monotonic() + (budget if budget is not None else
                                       probe["failureThreshold"] * probe["periodSeconds"])
        answer = (0, "")
        while time.monotonic() < deadline and proc.poll() is None:
            answer = self.probe(name)
            if answer[0] == 200:
                return answer
            time.sleep(min(probe["periodSeconds"], 0.5))
        return answer

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def store(name: str, **spec: Any) -> dict[str, Any]:
    # Short drain and grace keep the test quick; the contract is the same.
    spec.setdefault("server", {"drainSeconds": 1, "graceSeconds": 2, "preStopSeconds": 1})
    return {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "UnsubscribeStore",
            "metadata": {"name": name, "namespace": "team", "uid": "u-1"},
            "spec": with_defaults(spec)}


def _variant(kind: str, postgres: PgCluster | None, tmp_path: Path) -> tuple[dict, dict]:
    if kind == "embedded":
        return store("dev", storage={"type": "embedded"},
                     replicas={"min": 1, "max": 1}), {}
    dsn = postgres.create_database(f"contract_{os.getpid()}_{kind.replace('-', '_')}")
    owner = store("sup", storage={"type": "postgres", "postgres": {
        "dsnSecretRef": {"name": "pg-app", "key": "uri"}}},
        durability="replicated" if kind == "postgres-replicated" else "local",
        resubscribe={"secretRef": {"name": "resub"}})
    return owner, {"pg-app": {"uri": dsn.encode()},
                   "resub": {"token": b"resubscribe-credential-0123456789"}}


@pytest.mark.parametrize("kind", ["embedded", "postgres"])
def test_the_store_runs_from_the_rendered_deployment(kind: str, request, tmp_path: Path) -> None:
    postgres = request.getfixturevalue("postgres") if kind == "postgres" else None
    owner, secrets = _variant(kind, postgres, tmp_path)
    pod = Pod(owner, secrets, tmp_path)
    try:
        # The migration runs first and exits; running it again changes nothing.
        assert "schema up to date" in pod.run_init_containers()[0]
        assert "applied: nothing" in pod.run_init_containers()[0] or kind == "embedded"
        proc = pod.start()
        assert pod.wait_probe("startupProbe", proc)[0] == 200, "startup probe never passed"
        status, body = pod.wait_probe("readinessProbe", proc, budget=30)
        assert status == 200, f"not ready: {body}"

        # The key the operator generated signs links the server accepts.
        keys = load_keyring(key_dir=pod.volumes["signing-key"], env={})
        token = mint_token(keys, "Ann@Example.com", "news")
        post = urllib.request.Request(
            f"http://127.0.0.1:{pod.named_ports['http']}/u/{token}",
            data=b"List-Unsubscribe=One-Click", method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(post, timeout=10) as rsp:
            assert rsp.status == 200
        with grpc.insecure_channel(f"127.0.0.1:{pod.named_ports['grpc']}") as channel:
            stub = pb_grpc.UnsubscribeStoreStub(channel)
            checked = stub.Check(pb.CheckRequest(addresses=["ann@example.com"], scope="news"),
                                 timeout=10)
            assert [r.address for r in checked.suppressed] == ["ann@example.com"]
            facts = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
            assert facts.ready and facts.highly_available == (kind == "postgres")

        # SIGTERM (after the preStop pause): not ready at once, gone within the grace.
        container = pod.spec["containers"][0]
        os.kill(proc.pid, signal.SIGTERM)
        stopped = time.monotonic()
        unready = None
        while time.monotonic() - stopped < 3 * container["readinessProbe"]["periodSeconds"]:
            if pod.probe("readinessProbe")[0] != 200:
                unready = time.monotonic() - stopped
                break
            time.sleep(0.05)
        assert unready is not None, "still ready after SIGTERM"
        budget = pod.spec["terminationGracePeriodSeconds"] - \
            container["lifecycle"]["preStop"]["sleep"]["seconds"]
        try:
            proc.wait(budget)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {budget}s after SIGTERM: the kubelet would SIGKILL it")
        assert proc.returncode == 0
    finally:
        pod.stop()


def test_replicated_durability_without_a_synchronous_standby_keeps_pods_unready(
        postgres: PgCluster, tmp_path: Path) -> None:
    """What a cluster shows when `durability: replicated` is unmet: the pods run (liveness
    passes, so they are not restarted) but never pass readiness, whose answer says why —
    the Deployment has no ready replica and the store reports StorageReady=False."""
    owner, secrets = _variant("postgres-replicated", postgres, tmp_path)
    pod = Pod(owner, secrets, tmp_path)
    try:
        pod.run_init_containers()
        proc = pod.start()
        assert pod.wait_probe("startupProbe", proc)[0] == 200
        # Until the database has been asked, the answer is "starting"; then the reason.
        deadline = time.monotonic() + 30
        status, body = pod.probe("readinessProbe")
        while "synchronous_standby_names" not in body and time.monotonic() < deadline:
            assert status != 200, "ready without a synchronous standby"
            time.sleep(0.2)
            status, body = pod.probe("readinessProbe")
        assert status == 503, body
        assert "synchronous_standby_names" in body
        assert pod.probe("livenessProbe")[0] == 200
        assert proc.poll() is None
    finally:
        pod.stop()


def test_a_rendered_filter_pod_reports_what_the_rendered_store_holds(tmp_path: Path) -> None:
    """Both rendered Deployments together: the filter pod of a SpamPolicy with
    `unsubscribeStoreRef` follows the store pod of that UnsubscribeStore. The store's
    Service address (cluster DNS) becomes the store process's loopback address; the filter
    is started as in tests/operator/spampolicy/test_contract.py."""
    from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
    from mailwarden_operator.spampolicy.policy import build_bundle
    from mailwarden_operator.spampolicy.render.configmap import render_configmap
    from mailwarden_operator.spampolicy.render.deployment import SuppressionKey, render_deployment
    from mailwarden_operator.unsubscribestore import naming as store_naming
    from mailwarden_operator.spampolicy.spec import with_defaults as policy_defaults
    from mailwarden_operator.unsubscribestore.naming import grpc_target
    from tests.operator.spampolicy.test_contract import (REPO, _health, _kubelet_layout,
                                                         _model_bytes)

    import yaml

    owner, secrets = _variant("embedded", None, tmp_path)
    (tmp_path / "store").mkdir()
    store_pod = Pod(owner, secrets, tmp_path / "store")
    filter_proc = None
    try:
        store_pod.run_init_containers()
        store_proc = store_pod.start()
        assert store_pod.wait_probe("readinessProbe", store_proc, budget=30)[0] == 200

        body = yaml.safe_load((REPO / "examples" / "spampolicy.yaml").read_text())
        body["metadata"] = {"name": "mail", "namespace": "team", "uid": "u-2"}
        body["spec"]["unsubscribeStoreRef"] = {"name": owner["metadata"]["name"]}
        body["spec"]["server"] = {"drainSeconds": 1, "graceSeconds": 1, "workers": 1}
        body["spec"] = policy_defaults(body["spec"])
        model = _model_bytes()
        bundle = build_bundle(body["spec"]["policy"], lambda name: {
            "binaryData": {"model.json.gz": base64.b64encode(model).decode()}})
        # The filter pod mounts the store's fingerprint-key Secret (as the reconciler
        # passes it once the Secret exists): same key file as the store's.
        key_name = store_naming.fingerprint_key_secret(owner)
        deployment = render_deployment(body, bundle.hash, RenderSettings(),
                                       key=SuppressionKey(key_name, "1"))
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        key_mount = next(m["mountPath"] for m in container["volumeMounts"]
                         if m["name"] == "suppression-key")
        policy_dir = _kubelet_layout(render_configmap(body, bundle), tmp_path / "policy")
        mount = next(m["mountPath"] for m in container["volumeMounts"]
                     if m["name"] == "policy")
        service = grpc_target(owner["metadata"]["name"], "team")
        ports = {p["containerPort"]: free_port() for p in container["ports"]}
        argv = [shutil.which("mailwarden", path=str(Path(sys.executable).parent))]
        for arg in container["args"]:
            if arg == mount:
                arg = str(policy_dir)
            elif arg.startswith(key_mount + "/"):  # the same Secret the store pod mounts
                arg = str(store_pod.volumes["fingerprint-key"]) + arg[len(key_mount):]
            elif arg == service:  # what the Service and cluster DNS resolve it to
                arg = f"127.0.0.1:{store_pod.named_ports['grpc']}"
            elif arg.isdigit() and int(arg) in ports:
                arg = str(ports[int(arg)])
            argv.append(arg)
        assert f"127.0.0.1:{store_pod.named_ports['grpc']}" in argv
        filter_port = ports[container["ports"][0]["containerPort"]]
        filter_proc = subprocess.Popen(argv + ["--host", "127.0.0.1"], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while _health(filter_port, 2) != "SERVING":
            assert filter_proc.poll() is None and time.monotonic() < deadline, \
                "the filter never became SERVING"
            time.sleep(0.5)

        # An unsubscribe through the store's one-click endpoint, signed with the generated key.
        keys = load_keyring(key_dir=store_pod.volumes["signing-key"], env={})
        post = urllib.request.Request(
            f"http://127.0.0.1:{store_pod.named_ports['http']}/u/"
            f"{mint_token(keys, 'ann@example.com', 'news')}",
            data=b"List-Unsubscribe=One-Click", method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(post, timeout=10) as rsp:
            assert rsp.status == 200
        request = filter_pb2.ClassifyRequest(
            message=b"From: a@example.com\r\nSubject: news\r\n\r\nhello\r\n",
            envelope=filter_pb2.Envelope(mail_from="a@example.com",
                                         recipients=["ann@example.com", "bob@example.com"]),
            list_scope="news")
        with grpc.insecure_channel(f"127.0.0.1:{filter_port}") as channel:
            stub = filter_pb2_grpc.FilterStub(channel)
            deadline = time.monotonic() + 30
            while True:
                reply = stub.Classify(request, timeout=10)
                if list(reply.suppressed_recipients) == ["ann@example.com"]:
                    break
                assert time.monotonic() < deadline, f"never suppressed: {reply}"
                time.sleep(0.2)
        assert filter_pb2.SuppressionState.Name(reply.suppression_state) == \
            "SUPPRESSION_FRESH"
        # It started from the store's fingerprint snapshot (one transfer), not a Watch
        # snapshot: the keys agree.
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{store_pod.named_ports['metrics']}/metrics", timeout=10
        ).read().decode()
        assert 'mailwarden_unsubscribe_fingerprint_snapshots_total{outcome="sent"} 1.0' \
            in metrics
        assert 'mailwarden_unsubscribe_fingerprint_snapshots_total{outcome="other_key"} 0.0' \
            in metrics
    finally:
        if filter_proc is not None and filter_proc.poll() is None:
            os.killpg(filter_proc.pid, signal.SIGKILL)
            filter_proc.wait(10)
        store_pod.stop()
