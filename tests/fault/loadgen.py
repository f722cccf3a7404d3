"""The load generator: Classify at a configured rate through the balancing client
(`mailwarden.client.FilterClient`, exactly as a sending system makes it), in a process of
its own so its work never shares an interpreter lock with the test's.

Open loop: call i is due at t0 + i/rate whatever happened to the calls before it (a slow
server does not slow the offered load, so latency includes any queueing — no coordinated
omission). A pool of threads makes the blocking calls; an idle thread costs nothing.

    python -m tests.fault.loadgen --target dns://127.0.0.1:5353/name:9090 \
        --messages-dir .cache/split/test/ham --phase 10:40 --phase 30:200 --phase inf:40 \
        --out calls.tsv

Phases are SECONDS:RATE, or SECONDS:RATE:heavy for 512 KiB messages (the corpus'
messages with their bodies repeated); `inf` runs until SIGTERM/SIGINT, which stop issuing new calls,
wait for the calls in flight and write the records. Once the client has a ready replica
it prints `READY <t0>` (t0 on the system's monotonic clock, shared by every process).

`--barrage N --concurrency C` instead sends N hostile messages (tests/fault/hostile.py)
closed-loop from C threads, as fast as they are answered.

`--bursts W --concurrency C --burst-mib M` sends W waves of C calls at once, each a message
with an M MiB attachment; a wave starts when the one before it is answered.

Records, one per call, tab-separated: scheduled start, actual start, end (monotonic
seconds), status code name, policy hash (empty unless OK), and for the barrage the kind
and size of the message. The last line is `#` + JSON totals (CPU seconds used, calls).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailwarden.client import ClassifyError, FilterClient


def load_messages(directories: list[Path], limit: int) -> list[bytes]:
    files: list[Path] = []
    for directory in directories:
        files += sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    # Deterministic, mixed across the directories.
    random.Random(7).shuffle(files)
    return [f.read_bytes() for f in files[:limit]]


HEAVY_BYTES = 512 * 1024


def heavy(message: bytes) -> bytes:
    """A large newsletter-sized message: `message` with its body grown to 512 KiB (the
    engine scans 256 KiB of it: tens of milliseconds of server CPU instead of one)."""
    head, sep, body = message.partition(b"\n\n")
    body = body or message
    return head + (sep or b"\n\n") + (body * (HEAVY_BYTES // max(1, len(body)) + 1))[:HEAVY_BYTES]


def parse_phase(text: str) -> tuple[float, float, bool]:
    seconds, _, rest = text.partition(":")
    rate, _, kind = rest.partition(":")
    duration = float("inf") if seconds == "inf" else float(seconds)
    if not rate or float(rate) <= 0 or duration <= 0 or kind not in ("", "heavy"):
        raise argparse.ArgumentTypeError(f"phase must be SECONDS:RATE[:heavy], got {text!r}")
    return duration, float(rate), kind == "heavy"


class Recorder:
    def __init__(self) -> None:
        self.rows: list[str] = []
        self.lock = threading.Lock()

    def add(self, row: str) -> None:
        with self.lock:
            self.rows.append(row)


def _call(client: FilterClient, message: bytes, deadline: float) -> tuple[str, str]:
    try:
        response = client.classify(message, mail_from="sender@example.com",
                                   recipients=["rcpt@example.org"], client_ip="192.0.2.1",
                                   helo="mx.example.com", deadline=deadline)
    except ClassifyError as exc:
        # For failures the hash column carries the server's explanation instead.
        return exc.code.name, " ".join(exc.details.split())[:120]
    return "OK", response.policy_hash


def run_rate(client: FilterClient, messages: list[bytes],
             phases: list[tuple[float, float, bool]], deadline: float, threads: int,
             stop: threading.Event, out: Recorder) -> int:
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="call")

    def one(due: float, message: bytes) -> None:
        started = time.monotonic()
        code, policy_hash = _call(client, message, deadline)
        out.add(f"{due:.6f}\t{started:.6f}\t{time.monotonic():.6f}\t{code}\t{policy_hash}")

    issued = 0
    phase_start = time.monotonic()
    heavy_messages = [heavy(m) for m in messages[:20]] if any(h for *_, h in phases) else []
    for duration, rate, is_heavy in phases:
        pool_of = heavy_messages if is_heavy else messages
        interval = 1.0 / rate
        due = phase_start
        end = phase_start + duration
        while due < end and not stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                if stop.wait(delay):
                    break
            pool.submit(one, due, pool_of[issued % len(pool_of)])
            issued += 1
            due += interval
        if stop.is_set():
            break
        phase_start = end
    pool.shutdown(wait=True)
    return issued


def _closed_loop_call(client: FilterClient, message: bytes, kind: str, deadline: float,
                      out: Recorder) -> None:
    """One call, recorded with the kind and size of its message (due = start: nothing is
    scheduled in closed loop)."""
    started = time.monotonic()
    code, policy_hash = _call(client, message, deadline)
    out.add(f"{started:.6f}\t{started:.6f}\t{time.monotonic():.6f}\t{code}\t{policy_hash}"
            f"\t{kind}\t{len(message)}")


def run_barrage(client: FilterClient, count: int, concurrency: int, seed: int,
                deadline: float, stop: threading.Event, out: Recorder) -> int:
    from tests.fault.hostile import hostile_message

    counter = iter(range(count))
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                index = next(counter, None)
            if index is None:
                return
            kind, message = hostile_message(random.Random(seed * 1_000_003 + index))
            _closed_loop_call(client, message, kind, deadline, out)

    workers = [threading.Thread(target=worker, name=f"barrage-{i}")
               for i in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(out.rows)


def large_message(mib: int) -> bytes:
    """A report with a base64 attachment that makes it `mib` MiB (in practice: a PDF or a
    scan sent to a list)."""
    head = (b"From: reports@example.com\r\nTo: team@example.org\r\n"
            b"Subject: quarterly figures\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"R\"\r\n\r\n--R\r\n"
            b"Content-Type: text/plain\r\n\r\nThe figures are attached.\r\n--R\r\n"
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    line = b"JVBERi0xLjcKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29k\r\n"
    body = line * ((mib * 1024 * 1024 - len(head)) // len(line))
    return head + body + b"--R--\r\n"


def run_bursts(client: FilterClient, waves: int, concurrency: int, mib: int,
               deadline: float, stop: threading.Event, out: Recorder) -> int:
    message = large_message(mib)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="burst")

    for _wave in range(waves):
        if stop.is_set():
            break
        for future in [pool.submit(_closed_loop_call, client, message, "large", deadline, out)
                       for _ in range(concurrency)]:
            future.result()
    pool.shutdown(wait=True)
    return len(out.rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--deadline", type=float, default=5.0, help="per call, seconds")
    parser.add_argument("--messages-dir", type=Path, action="append", default=[])
    parser.add_argument("--max-messages", type=int, default=300)
    parser.add_argument("--phase", type=parse_phase, action="append", default=[])
    parser.add_argument("--threads", type=int, default=128)
    parser.add_argument("--barrage", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bursts", type=int, default=0, metavar="W",
                        help="waves of --concurrency calls of large messages")
    parser.add_argument("--burst-mib", type=int, default=16, metavar="M",
                        help="size of each burst message, MiB")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--client-option", action="append", default=[], metavar="KEY=INT",
                        help="extra gRPC channel option for experiments, e.g. "
                        "grpc.dns_min_time_between_resolutions_ms=30000")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.barrage and not args.bursts and not (args.phase and args.messages_dir):
        parser.error("give --phase and --messages-dir, --barrage or --bursts")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    messages = load_messages(args.messages_dir, args.max_messages) if args.messages_dir else []
    options = [(key, int(value)) for key, _, value in
               (item.partition("=") for item in args.client_option)]
    client = FilterClient(args.target, deadline=args.deadline, options=options)
    try:
        client.wait_until_ready(args.ready_timeout)
    except ClassifyError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    out = Recorder()
    cpu_before = os.times()
    t0 = time.monotonic()
    print(f"READY {t0:.6f}", flush=True)
    if args.barrage:
        calls = run_barrage(client, args.barrage, args.concurrency, args.seed, args.deadline,
                            stop, out)
    elif args.bursts:
        calls = run_bursts(client, args.bursts, args.concurrency, args.burst_mib,
                           args.deadline, stop, out)
    else:
        calls = run_rate(client, messages, args.phase, args.deadline, args.threads, stop, out)
    elapsed = time.monotonic() - t0
    cpu_after = os.times()
    client.close()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    tmp = args.out.with_name(args.out.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write("\n".join(out.rows))
        handle.write("\n#" + json.dumps({"t0": t0, "elapsed": elapsed, "cpu_seconds": cpu,
                                         "calls": calls}) + "\n")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
