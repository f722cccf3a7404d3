"""`mailwarden local`: start the store and the replicas, run the demo, serve until Ctrl-C."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from mailwarden_local.demo import demo_and_wait
from mailwarden_local.errors import LocalError
from mailwarden_local.model import ensure_model
from mailwarden_local.policy import local_policy
from mailwarden_local.processes import Replica, ServerFailed, Store

REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO / "examples" / "spampolicy.yaml"
STARTUP_TIMEOUT_SECONDS = 90.0


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
        from mailwarden.tokens import generate_key
        from mailwarden_local.projection import project

        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        key_dir = workdir / "signing-keys"
        key_dir.mkdir(mode=0o700)
        (key_dir / "current").write_text(generate_key())
        store = Store("unsubscribe-store", workdir, key_dir=key_dir)
        store.start()

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        policy_dir = workdir / "policy"
        project(policy_dir, {"policy.yaml": local_policy(
            args.policy, getattr(args, "dns_servers", None)), "model.json.gz": model})
        say(f"policy: {args.policy} -> {policy_dir} (kubelet ConfigMap layout)")
        store.wait_ports(left())
        store.wait_serving(left())
        say(f"unsubscribe store: {store.address} (gRPC), {store.http_url} (one-click), "
            "embedded SQLite — not highly available, for local use")
        replicas = [Replica(f"filter-{i + 1}", workdir, policy_dir=policy_dir,
                            suppression_store=store.address) for i in range(args.replicas)]
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ports(left())
        for replica in replicas:
            replica.wait_serving(left())
        say(f"replicas: {len(replicas)} SERVING: " + ", ".join(
            f"{r.name} {r.address} (metrics :{r.metrics_port})" for r in replicas))
        return demo_and_wait(args, replicas, store, cache, say)
    except (LocalError, ServerFailed) as exc:
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
