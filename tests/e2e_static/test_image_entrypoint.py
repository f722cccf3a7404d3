"""The image's entrypoint works with the exact command lines the chart and the operator
render — checked on the host, since no container engine exists here.

What is reproduced from the Dockerfile (parsed, nothing hardcoded):
  - the build stage: its COPY sources staged into a build context (a wheel is built from
    them, as `pip install .` does), installed non-editable into a fresh virtualenv at the
    path the runtime stage copies (`/opt/mailwarden`, under a temporary root here);
  - the runtime stage: ENV (PATH with the venv first, PYTHONDONTWRITEBYTECODE, ...), USER,
    WORKDIR, ENTRYPOINT and CMD;
  - the pods' restrictions: a read-only root filesystem with a writable tmpfs on /tmp (the
    emptyDir the chart and the operator mount) — a private mount namespace (`unshare`) —
    and the non-root UID/GID (`setpriv`), when this machine allows it (root here: yes).

What is not (said so in the output): the base image's own Python build (a host Python of
the same minor version is used) and the dependencies' versions (the test virtualenv's are
linked in through a .pth file instead of being resolved from PyPI at build time).

Then: ENTRYPOINT + CMD; `mailwarden operator` with the chart's container args (helm
template), against the KMock emulator, with the chart's generated webhook certificate; and
`mailwarden serve` with the rendered filter Deployment's args and its ConfigMap projected
the way the kubelet does. Ports become ephemeral loopback ones (shared test machine) and
the mount paths temporary directories; everything else is passed as rendered."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# The PATH of the python base image, which the runtime stage's ENV PATH extends.
BASE_IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.timeout(600)


# --- the Dockerfile --------------------------------------------------------------------

@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Stage]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = value.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, value.strip()))
    return stages


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(v, str) for v in parsed), \
        f"not the exec (JSON) form: {value}"
    return parsed


@dataclass
class ImageSpec:
    build: Stage
    runtime: Stage
    venv: str                       # where the runtime stage copies the build's venv
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    workdir: str

    @classmethod
    def from_dockerfile(cls, path: Path) -> "ImageSpec":
        stages = parse_dockerfile(path.read_text())
        runtime = stages[-1]
        copied = [v for v in runtime.all("COPY") if v.startswith("--from=")]
        assert len(copied) == 1, copied
        origin, source, dest = shlex.split(copied[0])
        build = next(s for s in stages if s.name == origin.split("=", 1)[1])
        assert source == dest, "the venv keeps its path (its scripts hold absolute paths)"
        env: dict[str, str] = {}
        for value in runtime.all("ENV"):
            for item in shlex.split(value):
                key, _, val = item.partition("=")
                env[key] = val.replace("$PATH", env.get("PATH", BASE_IMAGE_PATH))
        user = runtime.last("USER") or "0:0"
        uid, _, gid = user.partition(":")
        return cls(build=build, runtime=runtime, venv=dest,
                   entrypoint=exec_form(runtime.last("ENTRYPOINT") or "[]"),
                   cmd=exec_form(runtime.last("CMD") or "[]"), env=env,
                   uid=int(uid), gid=int(gid or uid), workdir=runtime.last("WORKDIR") or "/")


# --- building the image's install on the host ------------------------------------------

def stage_context(build: Stage, context: Path) -> Path:
    """The build stage's COPY instructions, applied to a fresh directory (its WORKDIR)."""
    workdir = context / "src"
    workdir.mkdir(parents=True)
    for value in build.all("COPY"):
        assert not value.startswith("--"), value
        *sources, dest = shlex.split(value)
        for source in sources:
            origin = REPO / source
            target = workdir / dest / source if dest.endswith("/") else workdir / dest
            target = target.resolve()
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc"))  # as .dockerignore
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    return workdir


def same_minor_python_for(uid: int | None) -> tuple[str, str]:
    """A Python of this interpreter's minor version that `uid` can run (the base image's
    is not available here). Returns (path, note)."""
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
                  shutil.which(f"python{minor}"), f"/usr/bin/python{minor}",
                  f"/usr/local/bin/python{minor}"]
    probe = "import sys; print(sys.version_info[:2] == (%d, %d), sys.base_prefix)" % (
        sys.version_info.major, sys.version_info.minor)
    for candidate in dict.fromkeys(c for c in candidates if c and os.path.isfile(c)):
        as_self = subprocess.run([candidate, "-c", probe], capture_output=True, text=True,
                                 cwd="/", timeout=60)
        if as_self.returncode != 0 or not as_self.stdout.startswith("True"):
            continue
        if uid is None:
            return candidate, ""
        as_uid = subprocess.run(["setpriv", "--reuid", str(uid), "--regid", str(uid),
                                 "--clear-groups", candidate, "-c", probe],
                                capture_output=True, text=True, cwd="/", timeout=60)
        if as_uid.returncode == 0 and as_uid.stdout == as_self.stdout:
            return candidate, ""
    return "", f"no Python {minor} that UID {uid} can read"


@dataclass
class Installed:
    spec: ImageSpec
    root: Path
    isolation: list[str]            # what of the pod's restrictions applies here
    as_uid: bool
    # Host directories to bind onto mount points under `root` inside the sandbox: the test
    # environment's site-packages when they live under /tmp, which the sandbox's tmpfs hides
    # (a checkout cloned into /tmp).
    binds: dict[str, Path] = field(default_factory=dict)

    @property
    def venv(self) -> Path:
        return self.root / self.spec.venv.lstrip("/")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {"HOME": "/nonexistent", "HOSTNAME": "mailwarden-test"}
        for key, value in self.spec.env.items():
            env[key] = value.replace(self.spec.venv, str(self.venv))
        return {**env, **(extra or {})}

    def argv(self, command: list[str], extra_env: dict[str, str] | None = None,
             writable: tuple[Path, ...] = ()) -> list[str]:
        """`command` as the container runtime would start it in this image; `writable`
        directories stay writable, as volumes mounted into the pod do."""
        inner = ["env", "-i", *[f"{k}={v}" for k, v in self.env(extra_env).items()],
                 *command]
        if self.as_uid:
            inner = ["setpriv", "--reuid", str(self.spec.uid), "--regid", str(self.spec.gid),
                     "--clear-groups", *inner]
        if "read-only root" in self.isolation:
            volumes = "".join(f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(d))} && "
                              for d in writable)
            volumes += "".join(f"mount --bind {shlex.quote(src)} {shlex.quote(str(dst))} && "
                               for src, dst in self.binds.items())
            script = (volumes + 'mount -o remount,bind,ro / && '
                      'mount -t tmpfs -o mode=1777,size=64m tmpfs /tmp && cd "$0" && exec "$@"')
            return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                    self.spec.workdir, *inner]
        return inner

    def run(self, command: list[str], timeout: float = 120,
            writable: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(command, writable=writable), capture_output=True,
                              text=True, timeout=timeout, cwd=self.cwd,
                              stdin=subprocess.DEVNULL)

    def start(self, command: list[str], log: Path, extra_env: dict[str, str] | None = None,
              writable: tuple[Path, ...] = ()) -> subprocess.Popen:
        with open(log, "wb") as out:
            return subprocess.Popen(self.argv(command, extra_env, writable), stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.cwd,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def cwd(self) -> str:
        # In the namespace the script changes to WORKDIR itself; without it, the closest.
        return "/" if "read-only root" in self.isolation else \
            (self.spec.workdir if os.path.isdir(self.spec.workdir) else "/")


def _sandbox_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -o remount,bind,ro / && mount -t tmpfs tmpfs /tmp && "
                            "! touch /.mailwarden-ro-probe 2>/dev/null"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def image() -> Iterator[Installed]:
    spec = ImageSpec.from_dockerfile(REPO / "Dockerfile")
    # Outside /tmp (the sandbox mounts a fresh tmpfs there) and readable by the image's UID.
    root = Path(tempfile.mkdtemp(prefix="mailwarden-image-", dir="/var/tmp"
                                 if os.path.isdir("/var/tmp") else None))
    root.chmod(0o755)
    try:
        isolation = []
        if _sandbox_works():
            isolation.append("read-only root")
            isolation.append("tmpfs /tmp")
        switch_uid = os.geteuid() == 0 and shutil.which("setpriv") is not None
        python, note = same_minor_python_for(spec.uid if switch_uid else None)
        if not python and switch_uid:
            switch_uid = False
            python, _ = same_minor_python_for(None)
        assert python, note
        if switch_uid:
            isolation.append(f"UID {spec.uid}:{spec.gid}")
        context = stage_context(spec.build, root / "context")
        dist = root / "dist"
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                                "--no-build-isolation", "-w", str(dist), str(context)],
                               capture_output=True, text=True, timeout=300, cwd=root)
        assert built.returncode == 0, built.stderr
        installed = Installed(spec, root, isolation, switch_uid)
        subprocess.run([python, "-m", "venv", "--without-pip", str(installed.venv)],
                       check=True, cwd=root, timeout=120)
        wheel = next(dist.glob("mailwarden-*.whl"))
        done = subprocess.run([sys.executable, "-m", "pip", "--python",
                               str(installed.venv / "bin" / "python"), "install", "-q",
                               "--no-deps", "--no-index", str(wheel)],
                              capture_output=True, text=True, timeout=300, cwd=root)
        assert done.returncode == 0, done.stderr
        # The dependencies: this test environment's, after the image's own site-packages.
        site = next(installed.venv.glob("lib/python*/site-packages"))
        deps = list(dict.fromkeys([sysconfig.get_paths()["purelib"],
                                   sysconfig.get_paths()["platlib"]]))
        if "tmpfs /tmp" in isolation:
            for index, dep in enumerate(deps):
                if Path(dep).resolve().is_relative_to("/tmp"):
                    mount_point = root / f"test-deps-{index}"
                    mount_point.mkdir()
                    installed.binds[dep] = mount_point
                    deps[index] = str(mount_point)
        (site / "zz-mailwarden-test-deps.pth").write_text("\n".join(deps) + "\n")
        print(f"image install: {installed.venv} (Python {python}); isolation: "
              f"{', '.join(isolation) or 'none'}{'; ' + note if note else ''}")
        yield installed
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- checks ----------------------------------------------------------------------------

def test_the_installed_packages_come_from_the_image_build_not_the_checkout(
        image: Installed) -> None:
    # The build stage's own check (`python -c "import ..."` after `pip install .`).
    checks = [m.group(1) for value in image.spec.build.all("RUN")
              for m in [re.search(r'bin/python -c "([^"]+)"', value)] if m]
    assert checks, "the build stage no longer checks its install"
    code = ("import json, sys\n" + checks[0] + "\n"
            "import mailwarden, filter_server, mailwarden_operator\n"
            "print(json.dumps([m.__file__ for m in (mailwarden, filter_server, "
            "mailwarden_operator)]))")
    result = image.run(["python", "-c", code])
    assert result.returncode == 0, result.stderr
    for path in json.loads(result.stdout):
        assert path.startswith(str(image.venv)), path


def test_the_sandbox_is_what_it_claims(image: Installed) -> None:
    code = ("import json, os, tempfile\n"
            "def writable(d):\n"
            "    try:\n"
            "        tempfile.TemporaryFile(dir=d).close()\n"
            "        return True\n"
            "    except OSError:\n"
            "        return False\n"
            "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'cwd': os.getcwd(),\n"
            "    'root': writable('/'), 'venv': writable(os.environ['PATH'].split(':')[0]),\n"
            "    'tmp': writable('/tmp')}))")
    found = json.loads(image.run(["python", "-c", code]).stdout)
    if "read-only root" in image.isolation:
        assert found["root"] is False and found["venv"] is False and found["tmp"] is True
        assert found["cwd"] == image.spec.workdir
    if image.as_uid:
        assert (found["uid"], found["gid"]) == (image.spec.uid, image.spec.gid)


def test_entrypoint_and_cmd_print_the_usage(image: Installed) -> None:
    assert image.spec.entrypoint and image.spec.cmd
    result = image.run(image.spec.entrypoint + image.spec.cmd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mailwarden")
    for command in ("serve", "operator", "classify", "unsubscribe-server", "train", "token"):
        assert re.search(rf"^\s+{re.escape(command)}\b", result.stdout, re.M), command
    assert result.stderr == ""


def helm() -> str:
    found = shutil.which("helm") or str(REPO / ".cache" / "bin" / "helm")
    if not Path(found).is_file():
        pytest.fail("helm not found: run scripts/bootstrap.sh (it installs .cache/bin/helm)")
    return found


def chart_objects() -> list[dict[str, Any]]:
    out = subprocess.run([helm(), "template", "mw", str(REPO / "charts" / "mailwarden"),
                          "-n", "mail-system", "--set", "image.repository=example/mailwarden",
                          "--set", "image.tag=test"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen,
             log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} while waiting for {what}:\n"
                        f"{log.read_text(errors='replace')[-4000:]}")
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text(errors='replace')[-4000:]}")


def stop(proc: subprocess.Popen, budget: float) -> float:
    """SIGTERM to the container's main process, as the kubelet sends it; seconds to exit."""
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        pytest.fail(f"still running {budget:.0f}s after SIGTERM: the kubelet would SIGKILL it")
    return time.monotonic() - started


def test_operator_help_lists_every_flag_the_chart_passes(image: Installed) -> None:
    container = next(d for d in chart_objects() if d["kind"] == "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]
    assert container["command"][0] == image.spec.entrypoint[0]
    result = image.run(container["command"] + [container["args"][0], "--help"])
    assert result.returncode == 0, result.stderr
    for arg in container["args"][1:]:
        flag = arg.split("=", 1)[0]
        assert re.search(rf"(^|\s){re.escape(flag)}\b", result.stdout), (flag, result.stdout)


def test_operator_runs_from_the_charts_command_line(image: Installed) -> None:
    from tests.operator.conftest import Cluster
    from tests.operator.emulator import EmulatorThread

    objects = chart_objects()
    deployment = next(d for d in objects if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secret = next(d for d in objects if d["kind"] == "Secret")
    webhook = next(d for d in objects if d["kind"] == "ValidatingWebhookConfiguration")
    client = webhook["webhooks"][0]["clientConfig"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    cert_volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName")
                       == secret["metadata"]["name"])

    work = image.root / "operator"
    cert_dir = work / "webhook"
    cert_dir.mkdir(parents=True)
    for key, value in secret["data"].items():
        (cert_dir / key).write_bytes(base64.b64decode(value))
        (cert_dir / key).chmod(0o644)  # the Secret volume's default mode
    ports = {name: free_port() for name in ("--liveness-port", "--metrics-port",
                                            "--webhook-port")}
    args = []
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        if flag in ports:
            arg = f"{flag}={ports[flag]}"
        elif value == mounts[cert_volume["name"]]:
            arg = f"{flag}={cert_dir}"
        args.append(arg)
    with EmulatorThread() as emulator:
        Cluster(emulator)
        kubeconfig = emulator.kubeconfig(work)  # stands in for the in-cluster token
        kubeconfig.chmod(0o644)
        argv = container["command"] + args + ["--kubeconfig", str(kubeconfig),
                                               "--listen-address", "127.0.0.1"]
        log = work / "operator.log"
        proc = image.start(argv, log, {"POD_NAME": "mw-mailwarden-operator-0"})
        try:
            def healthy() -> bool:
                url = f"http://127.0.0.1:{ports['--liveness-port']}/healthz"
                with urllib.request.urlopen(url, timeout=2) as rsp:
                    return rsp.status == 200
            wait_for(healthy, 120, "the operator's /healthz", proc, log)
            # The webhook: TLS with the chart's certificate, verified the way the API
            # server verifies it (caBundle, the Service's DNS name), refusing a bad policy.
            service = f"{client['service']['name']}.{client['service']['namespace']}.svc"
            context = ssl.create_default_context(
                cadata=base64.b64decode(client["caBundle"]).decode())
            review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "request": {
                          "uid": "e2e", "operation": "CREATE", "name": "bad",
                          "namespace": "mail", "userInfo": {"username": "test"},
                          "kind": {"group": "mailwarden.dev", "version": "v1alpha1",
                                   "kind": "SpamPolicy"},
                          "resource": {"group": "mailwarden.dev", "version": "v1alpha1",
                                       "resource": "spampolicies"},
                          "object": {"apiVersion": "mailwarden.dev/v1alpha1",
                                     "kind": "SpamPolicy",
                                     "metadata": {"name": "bad", "namespace": "mail"},
                                     "spec": {"policy": {"rules": [
                                         {"name": "R", "target": "body", "pattern": "(a",
                                          "score": 1}]}}}}}

            def admit() -> dict[str, Any]:
                raw = socket.create_connection(("127.0.0.1", ports["--webhook-port"]),
                                               timeout=10)
                conn = http.client.HTTPSConnection(service, timeout=10)
                conn.sock = context.wrap_socket(raw, server_hostname=service)
                conn.request("POST", client["service"]["path"], json.dumps(review),
                             {"Content-Type": "application/json"})
                return json.loads(conn.getresponse().read())["response"]
            answer = wait_for(admit, 60, "the webhook over TLS", proc, log)
            assert answer["allowed"] is False
            assert "spec.policy.rules[0].pattern" in answer["status"]["message"]
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{ports['--metrics-port']}/metrics", timeout=10) as rsp:
                assert b"mailwarden_operator_webhook_reviews_total" in rsp.read()
            took = stop(proc, pod.get("terminationGracePeriodSeconds", 30))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    print(f"operator from the chart's args ({', '.join(image.isolation)}): stopped "
          f"{took:.1f}s after SIGTERM")
    assert proc.returncode == 0, log.read_text(errors="replace")[-4000:]


def test_filter_server_runs_from_the_rendered_deployment(image: Installed) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from filter_server.bayes.model import BayesModel
    from mailwarden_local.projection import project
    from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
    from mailwarden_operator.spampolicy.policy import build_bundle
    from mailwarden_operator.common.render import RenderSettings
    from mailwarden_operator.spampolicy.render.configmap import render_configmap
    from mailwarden_operator.spampolicy.render.deployment import render_deployment
    from mailwarden_operator.spampolicy.spec import with_defaults
    from testkit.kubelet import container_env

    body = next(d for d in yaml.safe_load_all((REPO / "examples" / "spampolicy.yaml")
                                              .read_text()) if d)
    body["metadata"] = {"name": "mail", "namespace": "team", "uid": "u-1"}
    body["spec"]["server"] = {"drainSeconds": 2, "graceSeconds": 2}  # a quick stop
    body["spec"] = with_defaults(body["spec"])
    model = BayesModel(nspam=2, nham=2, counts={"viagra": (2, 0), "agenda": (0, 2)})
    bundle = build_bundle(body["spec"]["policy"], lambda name: {
        "binaryData": {"model.json.gz": base64.b64encode(model.to_bytes()).decode()}})
    configmap = render_configmap(body, bundle)
    pod = render_deployment(body, bundle.hash, RenderSettings())["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][0] == image.spec.entrypoint[0]
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    files = {k: v.encode() for k, v in (configmap.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (configmap.get("binaryData") or {}).items()})
    policy_dir = image.root / "policy"
    project(policy_dir, files)

    ports = {p["containerPort"]: free_port() for p in container["ports"]}
    args = [str(policy_dir) if a == mount["mountPath"] else
            str(ports[int(a)]) if a.isdigit() and int(a) in ports else a
            for a in container["args"]]
    env = container_env(container, {"metadata.name": "mail-filter-abc",
                                    "metadata.namespace": "team"})
    grpc_port = ports[next(p["containerPort"] for p in container["ports"]
                           if p["name"] == "grpc")]
    log = image.root / "serve.log"
    proc = image.start(container["command"] + args + ["--host", "127.0.0.1"], log, env)
    try:
        def serving() -> bool:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=2)
                except grpc.RpcError:
                    return False
                return reply.status == health_pb2.HealthCheckResponse.SERVING
        startup = container["startupProbe"]
        wait_for(serving, startup["periodSeconds"] * startup["failureThreshold"],
                 "SERVING (the startup probe's budget)", proc, log)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = filter_pb2_grpc.FilterStub(channel).Classify(filter_pb2.ClassifyRequest(
                message=b"From: a@example.com\r\nSubject: FREE MONEY!!!\r\n\r\nviagra\r\n",
                envelope=filter_pb2.Envelope(mail_from="a@example.com")), timeout=20)
        assert reply.policy_hash == bundle.hash
        budget = pod["terminationGracePeriodSeconds"] - \
            container["lifecycle"]["preStop"]["sleep"]["seconds"]
        took = stop(proc, budget)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    print(f"filter server from the rendered Deployment ({', '.join(image.isolation)}): "
          f"SERVING, answered with policy {bundle.hash}, stopped {took:.1f}s after SIGTERM "
          f"(budget {budget}s)")
    assert proc.returncode == 0, log.read_text(errors="replace")[-4000:]


def test_embedded_store_runs_from_the_rendered_deployment(image: Installed) -> None:
    """The UnsubscribeStore pod (examples/unsubscribestore-dev.yaml's kind: embedded
    SQLite): the migration init container, then the server, both from the rendered
    command lines; volumes laid out as in tests/operator/unsubscribestore/test_contract.py, the data
    volume owned by the pod's fsGroup as the kubelet makes it."""
    import urllib.error

    from tests.operator.unsubscribestore.test_contract import Pod, store

    root = image.root / "store"
    root.mkdir()
    pod = Pod(store("dev", storage={"type": "embedded"}, replicas={"min": 1, "max": 1}),
              {}, root)
    fs_group = pod.spec["securityContext"]["fsGroup"]
    writable = []
    for name, directory in pod.volumes.items():
        volume = next(v for v in pod.spec["volumes"] if v["name"] == name)
        if "secret" not in volume:
            writable.append(directory)
            if image.as_uid:
                os.chown(directory, image.spec.uid, fs_group)
    server = pod.spec["containers"][0]
    for container in [*pod.spec["initContainers"], server]:
        assert container["command"][0] == image.spec.entrypoint[0]

    def argv(container: dict[str, Any]) -> list[str]:
        return container["command"][:1] + pod.argv(container)[1:]

    for container in pod.spec["initContainers"]:
        done = image.run(argv(container), timeout=120, writable=tuple(writable))
        assert done.returncode == 0, f"{container['name']}: {done.stdout}{done.stderr}"
    log = root / "store.log"
    proc = image.start(argv(server), log, writable=tuple(writable))
    try:
        wait_for(lambda: pod.probe("startupProbe")[0] == 200, 120, "the startup probe",
                 proc, log)
        wait_for(lambda: pod.probe("readinessProbe")[0] == 200, 60, "the readiness probe",
                 proc, log)
        from mailwarden.tokens import load_keyring, mint_token
        keys = load_keyring(key_dir=pod.volumes["signing-key"], env={})
        request = urllib.request.Request(
            f"http://127.0.0.1:{pod.named_ports['http']}/u/"
            f"{mint_token(keys, 'ann@example.com', 'news')}",
            data=b"List-Unsubscribe=One-Click", method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(request, timeout=10) as rsp:
                status = rsp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status == 200
        budget = pod.spec["terminationGracePeriodSeconds"] - \
            server["lifecycle"]["preStop"]["sleep"]["seconds"]
        took = stop(proc, budget)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    data = [p.name for p in pod.volumes["data"].iterdir()] if "data" in pod.volumes else []
    print(f"store from the rendered Deployment ({', '.join(image.isolation)}): migrated, "
          f"ready, one-click recorded, stopped {took:.1f}s after SIGTERM; data volume: {data}")
    assert proc.returncode == 0, log.read_text(errors="replace")[-4000:]
