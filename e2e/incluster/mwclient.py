"""The e2e suite's client inside the cluster.

It runs in Kubernetes Jobs from the Mailwarden image itself (`python` there has the
`mailwarden` package), mounted from a ConfigMap: the tests call the filter pods the way a
sending system in the cluster does — `mailwarden.client.FilterClient` on the headless
Service (`dns:///<policy>-filter-headless.<ns>.svc.cluster.local:9090`), round-robin per
request over every ready pod, health-aware, retrying UNAVAILABLE — instead of through
`kubectl port-forward`, which tunnels to one pod, breaks when that pod goes away and would
measure the tunnel instead of the service.

Subcommands (JSON lines on stdout; nothing but the standard library and mailwarden):

  resolve HOST                 the addresses DNS gives for HOST
  load --target T ...          classify continuously until --stop-file appears, recording
                               every failed call; the last line starts with "E2E-SUMMARY "
  oneclick --url U ...         RFC 8058 one-click against the store's HTTP Service, then
                               Classify on every filter pod until the address is suppressed
  oneclick-load --links F ...  one-click POSTs of many links until --stop-file appears (each
                               retried until acknowledged), every answer recorded with its
                               time, while every filter pod's suppression state is sampled;
                               then Classify on every pod until each acknowledged address is
                               suppressed
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from mailwarden.client import ClassifyError, FilterClient, verdict_dict

SUMMARY_PREFIX = "E2E-SUMMARY "
PART_PREFIX = "E2E-PART "
PART_ITEMS = 100
# `kubectl exec` creates this file to end a load run (/tmp is the pod's writable emptyDir).
DEFAULT_STOP_FILE = Path("/tmp/stop")


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}, sort_keys=True), flush=True)


def read_messages(directory: Path) -> list[tuple[str, bytes]]:
    # A ConfigMap volume also holds `..data` and timestamped directories: skip dot names.
    files = sorted(p for p in directory.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise SystemExit(f"mwclient: no messages in {directory}")
    return [(p.name, p.read_bytes()) for p in files]


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({f"{info[4][0]}:{port}" for info in infos})


# --- load ------------------------------------------------------------------------------

class Tally:
    """Counts shared by the load threads (one lock: a few thousand calls a second at most)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.codes: collections.Counter[str] = collections.Counter()
        self.hashes: collections.Counter[str] = collections.Counter()
        self.failures: list[dict[str, object]] = []
        self.last_hashes: collections.deque[str] = collections.deque(maxlen=50)
        self.latencies: list[float] = []
        # Calls that failed or took longer than --slow-seconds, as wall-clock [start, end,
        # code]: a fault test lines them up with the moment it injected the fault.
        self.disturbed: list[tuple[float, float, str]] = []
        self.disturbed_total = 0
        # Per policy hash: wall-clock time of its first and last answer (a rollout's
        # "every response carries the new hash after").
        self.hash_seen: dict[str, list[float]] = {}

    def disturbance(self, start: float, end: float, code: str) -> None:
        with self.lock:
            self.disturbed_total += 1
            if len(self.disturbed) < 2000:
                self.disturbed.append((round(start, 3), round(end, 3), code))

    def success(self, policy_hash: str, seconds: float) -> None:
        with self.lock:
            self.ok += 1
            self.hashes[policy_hash] += 1
            self.last_hashes.append(policy_hash)
            now = round(time.time(), 3)
            seen = self.hash_seen.setdefault(policy_hash, [now, now])
            seen[1] = now
            if len(self.latencies) < 200_000:
                self.latencies.append(seconds)

    def failure(self, code: str, details: str, request_id: str, at: float) -> None:
        with self.lock:
            self.failed += 1
            self.codes[code] += 1
            if len(self.failures) < 50:
                self.failures.append({"code": code, "details": details[:300],
                                      "request_id": request_id, "t": round(at, 3)})


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def run_load(args: argparse.Namespace) -> int:
    messages = read_messages(args.messages)
    # --keepalive-ms: an experiment's setting (how soon the client gives up a silent
    # peer); FilterClient's options replace its own defaults key by key.
    options = ([("grpc.keepalive_time_ms", args.keepalive_ms),
                ("grpc.keepalive_timeout_ms", args.keepalive_ms)] if args.keepalive_ms else [])
    client = FilterClient(args.target, deadline=args.deadline, options=options)
    tally = Tally()
    stop = threading.Event()
    started = time.monotonic()
    interval = args.threads / args.rate if args.rate > 0 else 0.0

    def worker(index: int) -> None:
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            name, raw = messages[(index + n * args.threads) % len(messages)]
            request_id = f"{args.name}-{index}-{n}"
            n += 1
            sent = time.monotonic()
            sent_wall = time.time()
            code = "OK"
            try:
                reply = client.classify(raw, mail_from="sender@shop.example",
                                        recipients=["rcpt@example.com"],
                                        request_id=request_id)
            except ClassifyError as exc:
                code = exc.code.name
                tally.failure(code, exc.details, request_id, sent - started)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, never lost
                code = "EXCEPTION"
                tally.failure(code, f"{type(exc).__name__}: {exc}", request_id,
                              sent - started)
            else:
                tally.success(reply.policy_hash, time.monotonic() - sent)
            took = time.monotonic() - sent
            if code != "OK" or took > args.slow_seconds:
                tally.disturbance(sent_wall, sent_wall + took, code)
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                else:
                    next_at = time.monotonic()

    args.stop_file.unlink(missing_ok=True)
    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(args.threads)]
    for thread in threads:
        thread.start()
    reason = "max-seconds"
    while time.monotonic() - started < args.max_seconds:
        if args.stop_file.exists():
            reason = "stop-file"
            break
        time.sleep(args.report_every)
        with tally.lock:
            emit("progress", elapsed=round(time.monotonic() - started, 1), ok=tally.ok,
                 failed=tally.failed, hashes=dict(tally.hashes))
    stop.set()
    for thread in threads:
        thread.join(args.deadline + 5)
    client.close()
    with tally.lock:
        summary = {
            "name": args.name, "stopped_by": reason,
            "seconds": round(time.monotonic() - started, 1),
            "ok": tally.ok, "failed": tally.failed, "codes": dict(tally.codes),
            "failures": tally.failures, "hashes": dict(tally.hashes),
            "last_hashes": list(tally.last_hashes),
            "started_wall": round(time.time() - (time.monotonic() - started), 3),
            "slow_seconds": args.slow_seconds,
            "disturbed": [list(d) for d in tally.disturbed],
            "disturbed_total": tally.disturbed_total,
            "hash_seen": tally.hash_seen,
            "latency_ms": {"p50": _percentile(tally.latencies, 0.50),
                           "p99": _percentile(tally.latencies, 0.99),
                           "max": _percentile(tally.latencies, 1.0)},
        }
    print(SUMMARY_PREFIX + json.dumps(summary, sort_keys=True), flush=True)
    return 0


# --- one-click -------------------------------------------------------------------------

def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=10) as rsp:
            return rsp.status, rsp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _check_pods(clients: dict[str, FilterClient], message: bytes, recipients: list[str],
                scope: str) -> dict[str, dict]:
    out = {}
    for address, client in clients.items():
        reply = client.classify(message, mail_from="news@shop.example", recipients=recipients,
                                mail_class="bulk", list_scope=scope)
        verdict = verdict_dict(reply)
        out[address] = {"suppressed": verdict["suppressed_recipients"],
                        "state": verdict["suppression_state"]}
    return out


def run_oneclick(args: argparse.Namespace) -> int:
    message = read_messages(args.messages)[0][1]
    pods = (args.filter_addresses.split(",") if args.filter_addresses
            else resolve(args.filter_host, args.port))
    clients = {a: FilterClient(addresses=[a], deadline=5.0) for a in pods}
    recipients = [args.address, args.other]
    result: dict[str, object] = {"pods": pods}
    # First every pod's suppression cache must be live (it follows the store's Watch).
    started = time.monotonic()
    while time.monotonic() - started < args.timeout:
        before = _check_pods(clients, message, recipients, args.scope)
        if all(state["state"] == "SUPPRESSION_FRESH" for state in before.values()):
            break
        time.sleep(0.2)
    result["fresh_after_seconds"] = round(time.monotonic() - started, 3)
    result["before"] = before
    result["get"] = _http("GET", args.url)[0]
    result["after_get"] = _check_pods(clients, message, recipients, args.scope)
    tampered_status, tampered_body = _http("POST", args.tampered_url,
                                           b"List-Unsubscribe=One-Click")
    status, body = _http("POST", args.url, b"List-Unsubscribe=One-Click")
    acknowledged = time.monotonic()
    result["post"] = status
    result["tampered_post"] = tampered_status
    result["tampered_same_response"] = (tampered_status, tampered_body) == (status, body)
    # Every filter pod must report the address as suppressed; record how long each took.
    visible: dict[str, float | None] = {a: None for a in pods}
    while time.monotonic() - acknowledged < args.timeout and None in visible.values():
        for address, state in _check_pods(clients, message, [args.address],
                                          args.scope).items():
            if visible[address] is None and args.address in state["suppressed"]:
                visible[address] = round(time.monotonic() - acknowledged, 3)
        time.sleep(0.02)
    result["visible_after_seconds"] = visible
    result["after_post"] = _check_pods(clients, message, recipients, args.scope)
    for client in clients.values():
        client.close()
    print(SUMMARY_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    return 0


# --- one-click under load --------------------------------------------------------------

def _post_one_click(url: str, timeout: float) -> str:
    """The answer's status code, or the transport error's class name."""
    request = urllib.request.Request(url, data=b"List-Unsubscribe=One-Click", method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as rsp:
            rsp.read()
            return str(rsp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return str(exc.code)
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        return type(reason).__name__


def _states(clients: dict[str, FilterClient], message: bytes, recipients: list[str],
            scope: str) -> dict[str, dict]:
    """Each pod's answer for `recipients` ({"suppressed", "state"}), or {"error": code}."""
    out: dict[str, dict] = {}
    for address, client in clients.items():
        try:
            out[address] = _check_pods({address: client}, message, recipients, scope)[address]
        except ClassifyError as exc:
            out[address] = {"error": exc.code.name}
    return out


def run_oneclick_load(args: argparse.Namespace) -> int:
    """A sender's one-click traffic (every link POSTed until it is acknowledged, as a
    mailbox provider retries a 503) with every attempt recorded, and a sampler of every
    filter pod's suppression state; after the stop file, Classify on every pod until every
    acknowledged address is suppressed there."""
    links: list[dict[str, str]] = json.loads(args.links.read_text())
    message = read_messages(args.messages)[0][1]

    def filter_pods() -> list[str]:
        # Resolved again and again: the HPA may remove a pod meanwhile (it leaves DNS as
        # its deletion starts, while it still serves out its preStop and drain).
        return (args.filter_addresses.split(",") if args.filter_addresses
                else resolve(args.filter_host, args.port))
    lock = threading.Lock()
    pending = collections.deque(links)
    attempts: list[tuple[str, float, float, str]] = []   # address, start, end, answer
    acked: dict[str, float] = {}                          # address -> wall time of the 200
    samples: list[tuple[float, str, str]] = []            # wall time, pod, state or error
    stopping = threading.Event()
    interval = args.threads / args.rate if args.rate > 0 else 0.0

    def poster() -> None:
        while not stopping.is_set():
            with lock:
                if not pending:
                    break
                link = pending.popleft()
            began = time.time()
            answer = _post_one_click(link["url"], args.http_timeout)
            ended = time.time()
            with lock:
                attempts.append((link["address"], round(began, 3), round(ended, 3), answer))
                if answer == "200":
                    acked[link["address"]] = round(ended, 3)
                else:
                    pending.appendleft(link)  # retried next, the same link
            stopping.wait(max(0.0, interval - (ended - began)))

    def sampler() -> None:
        clients: dict[str, FilterClient] = {}
        resolved = 0.0
        try:
            while not stopping.is_set():
                at = time.time()
                if at - resolved >= 1.0:
                    try:
                        now = set(filter_pods())
                    except OSError:
                        now = set(clients)
                    resolved = at
                    for gone in set(clients) - now:
                        clients.pop(gone).close()
                    for new in now - set(clients):
                        clients[new] = FilterClient(addresses=[new], deadline=2.0)
                for pod, state in _states(clients, message, [args.probe], args.scope).items():
                    samples.append((round(at, 3), pod,
                                    state.get("state") or f"error:{state.get('error')}"))
                stopping.wait(args.sample_every)
        finally:
            for client in clients.values():
                client.close()

    threads = [threading.Thread(target=poster, daemon=True) for _ in range(args.threads)]
    threads.append(threading.Thread(target=sampler, daemon=True))
    for thread in threads:
        thread.start()
    started = time.monotonic()
    stopped_by = "max-seconds"
    while time.monotonic() - started < args.max_seconds:
        if args.stop_file.exists():
            stopped_by = "stop-file"
            break
        with lock:
            emit("progress", ok=len(acked), attempts=len(attempts), left=len(pending))
        time.sleep(1.0)
    stopping.set()
    for thread in threads:
        thread.join(timeout=args.http_timeout + 10)

    # Every acknowledged address must now be suppressed on every pod (the caches resumed
    # where they were: a change missed across the failover would never show up).
    pods = filter_pods()
    clients = {a: FilterClient(addresses=[a], deadline=5.0) for a in pods}
    wanted = sorted(acked)
    final: dict[str, dict] = {}
    checked = time.monotonic()
    for pod, client in clients.items():
        while True:
            missing: list[str] = []
            state = ""
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                got = _states({pod: client}, message, chunk, args.scope)[pod]
                state = got.get("state") or f"error:{got.get('error')}"
                missing += sorted(set(chunk) - set(got.get("suppressed", [])))
            if not missing or time.monotonic() - checked > args.timeout:
                break
            time.sleep(0.2)
        final[pod] = {"missing": len(missing), "missing_sample": missing[:20], "state": state,
                      "after_seconds": round(time.monotonic() - checked, 3)}
        client.close()
    # The records go in parts of PART_ITEMS: a container runtime may split a long log line.
    for kind, items in (("acked", sorted(acked.items())), ("attempts", attempts),
                        ("samples", samples)):
        for i in range(0, len(items), PART_ITEMS):
            print(PART_PREFIX + json.dumps({"kind": kind, "items": items[i:i + PART_ITEMS]}),
                  flush=True)
    print(SUMMARY_PREFIX + json.dumps({
        "pods": pods, "links": len(links), "stopped_by": stopped_by, "final": final},
        sort_keys=True), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mwclient", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    res = sub.add_parser("resolve")
    res.add_argument("host")
    res.add_argument("--port", type=int, default=9090)
    load = sub.add_parser("load")
    load.add_argument("--target", required=True)
    load.add_argument("--messages", type=Path, default=Path("/e2e/messages"))
    load.add_argument("--name", default=os.environ.get("HOSTNAME", "load"))
    load.add_argument("--threads", type=int, default=2)
    load.add_argument("--rate", type=float, default=0.0,
                      help="calls per second in all (0: as fast as the threads go)")
    load.add_argument("--deadline", type=float, default=5.0)
    load.add_argument("--keepalive-ms", type=int, default=0,
                      help="gRPC keepalive time and timeout (0: the FilterClient's own)")
    load.add_argument("--slow-seconds", type=float, default=1.0,
                      help="a call slower than this is listed as disturbed, as a failed one")
    load.add_argument("--max-seconds", type=float, default=900.0)
    load.add_argument("--report-every", type=float, default=2.0)
    load.add_argument("--stop-file", type=Path, default=DEFAULT_STOP_FILE)
    click = sub.add_parser("oneclick")
    click.add_argument("--url", required=True)
    click.add_argument("--tampered-url", required=True)
    click.add_argument("--address", required=True)
    click.add_argument("--other", required=True)
    click.add_argument("--scope", required=True)
    where = click.add_mutually_exclusive_group(required=True)
    where.add_argument("--filter-host", help="headless Service: every address is checked")
    where.add_argument("--filter-addresses", help="ip:port,ip:port (outside a cluster)")
    click.add_argument("--port", type=int, default=9090)
    click.add_argument("--messages", type=Path, default=Path("/e2e/messages"))
    click.add_argument("--timeout", type=float, default=60.0)
    flood = sub.add_parser("oneclick-load")
    flood.add_argument("--links", type=Path, required=True,
                       help='JSON list of {"address", "url"}, the one-click links to POST')
    pods = flood.add_mutually_exclusive_group(required=True)
    pods.add_argument("--filter-host",
                      help="headless Service of the filter pods: every address is sampled")
    pods.add_argument("--filter-addresses", help="ip:port,ip:port (outside a cluster)")
    flood.add_argument("--scope", required=True)
    flood.add_argument("--probe", required=True,
                       help="recipient of the sampler's Classify calls")
    flood.add_argument("--port", type=int, default=9090)
    flood.add_argument("--messages", type=Path, default=Path("/e2e/messages"))
    flood.add_argument("--threads", type=int, default=4)
    flood.add_argument("--rate", type=float, default=20.0, help="POSTs per second in all")
    flood.add_argument("--http-timeout", type=float, default=5.0)
    flood.add_argument("--sample-every", type=float, default=0.2)
    flood.add_argument("--timeout", type=float, default=60.0,
                       help="for every acknowledged address to be suppressed on every pod")
    flood.add_argument("--max-seconds", type=float, default=600.0)
    flood.add_argument("--stop-file", type=Path, default=DEFAULT_STOP_FILE)
    args = parser.parse_args(argv)
    if args.command == "resolve":
        print(SUMMARY_PREFIX + json.dumps({"addresses": resolve(args.host, args.port)}),
              flush=True)
        return 0
    if args.command == "load":
        return run_load(args)
    if args.command == "oneclick-load":
        return run_oneclick_load(args)
    return run_oneclick(args)


if __name__ == "__main__":
    sys.exit(main())
