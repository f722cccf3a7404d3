"""What local mode shows: held-out mail classified through the balancing client, what each
replica served (from its /metrics), and a one-click unsubscribe reaching Classify."""

from __future__ import annotations

import argparse
import time
import urllib.request
from pathlib import Path

from mailwarden import wire
from mailwarden_local.errors import LocalError
from mailwarden_local.processes import Replica, Store


def replica_stats(text: str) -> tuple[float, str]:
    """(Classify calls served, live policy hash) from a replica's /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    served, live_hash = 0.0, "?"
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == wire.FILTER_REQUESTS_TOTAL and \
                    sample.labels.get("method") == "Classify":
                served += sample.value
            elif sample.name == wire.FILTER_POLICY_INFO and sample.value == 1:
                live_hash = sample.labels["hash"]
    return served, live_hash


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
    from mailwarden_local.corpus import Split

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
    from filter_server.message import parse_message

    subject = parse_message(path.read_bytes()).header("subject").strip()
    return f'"{subject}"' if subject else path.name


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
    from mailwarden.filter.v1 import filter_pb2
    from mailwarden.tokens import load_keyring
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


def demo_and_wait(args: argparse.Namespace, replicas: list[Replica], store: Store,
                   cache: Path, say) -> int:
    from mailwarden.client import ClassifyError, FilterClient
    from mailwarden_local.corpus import Split

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
            replica.check_alive()  # ServerFailed: it exited, with its code and log
        time.sleep(1)
