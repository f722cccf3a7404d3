#!/usr/bin/env python3
"""Suppression at sender scale (issue 15): prints figures, asserts nothing about speed.

Before (main's SuppressionCache: a dict of plaintext addresses per worker) and after (one
mapped index of 8-byte keyed fingerprints per pod, plus each worker's overlay), side by
side in one run:

1. index: the data structure alone at each size — build time (sort + write), bytes per
   suppression for a 2-worker pod (sum of the workers' PSS over the mapped file: shared
   pages divided among their sharers, what the pod's cgroup holds once), time for a worker
   to map it, and look-up cost per recipient (keyed-BLAKE2b fingerprint + binary search;
   the search alone; the fingerprint alone next to format 2's HMAC-SHA256, same process and
   addresses). Times per item are the minimum of 7 repeats (the least disturbed by other
   processes). Before: the dict the old cache built, per worker, times two workers; its
   look-up (dict get + the rule). Index fingerprints here come from numpy's generator: a
   keyed PRF's output is uniform, and fingerprinting 100 M addresses in Python would take
   minutes on its own.
3. import: `mailwarden unsubscribe import FILE` of a CSV into a PostgreSQL-backed store
   (a PgCluster the benchmark starts): rows/s, the client's peak RSS, and a re-run of the
   same file (idempotent: nothing new). "before" runs main's client and server.
2. e2e: a real unsubscribe store (embedded SQLite, rows written by SQL so the benchmark
   does not wait on Import) and `mailwarden serve --workers 2 --suppression-store`: seconds
   until every worker reports FRESH with every suppression, and the pod's memory (PSS of
   the process tree) less the same pod following an empty store. "before" runs main's code
   (`git archive` of --before-ref on PYTHONPATH), "after" this tree.

Usage: .venv/bin/python benchmarks/suppression_scale.py [--index-sizes 1M,10M,100M]
       [--before-sizes 1M,10M] [--e2e-sizes 1M] [--e2e-before-sizes 1M]
       [--import-sizes 1M] [--import-before-sizes 200k] [--before-ref 97da8f3]
Everything runs on loopback; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from mailwarden.fingerprint_index import SortedFingerprints, _unique  # noqa: E402
from mailwarden.fingerprints import FingerprintKey  # noqa: E402
from testkit.filter import Server, mini_policy, wait_for, write_policy  # noqa: E402
from testkit.procfs import memory, tree  # noqa: E402
from testkit.store import StoreProcess  # noqa: E402

MIB = 1 << 20
WORKERS = 2


def size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


def sizes(text: str) -> list[int]:
    return [size(t) for t in text.split(",") if t.strip()]


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def address(i: int) -> str:
    return f"reader{i:09d}@example{i % 997}.com"


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- 1. the data structure ---------------------------------------------------------------
WORKER_SCRIPT = textwrap.dedent("""
    import hashlib, hmac, random, sys, time, timeit
    sys.path.insert(0, sys.argv[1])
    from mailwarden.fingerprint_index import SortedFingerprints
    from mailwarden.fingerprints import FingerprintKey
    key = FingerprintKey(b"b" * 32)
    print("base", flush=True); sys.stdin.readline()
    t = time.perf_counter()
    index = SortedFingerprints.open(sys.argv[2], key)
    opened = time.perf_counter() - t
    int(index.array.sum()) + int(index.directory.sum())  # touch every page, as look-ups do
    print("mapped", flush=True); sys.stdin.readline()
    rng = random.Random(1)
    n = len(index)
    present = [int(index.array[rng.randrange(n)]) >> 1 for _ in range(20000)]
    absent = [rng.getrandbits(63) for _ in range(20000)]
    probes = present + absent
    assert sum(index.lookup(fp) is not None for fp in probes) >= 20000

    def per_item(run, items):
        # Minimum of repeats: the run least disturbed by the other processes on the host
        # (the timeit module's advice); a mean here measures the neighbours.
        return min(timeit.repeat(lambda: run(items), number=1, repeat=7)) / len(items)

    lookup = index.lookup
    search = per_item(lambda ps: [lookup(fp) for fp in ps], probes)
    addrs = [f"reader{i:09d}@example{i % 997}.com" for i in range(20000)]
    fingerprint = key.fingerprint
    full = per_item(lambda xs: [lookup(fingerprint(a, "*")) for a in xs], addrs)
    blake = per_item(lambda xs: [fingerprint(a, "*") for a in xs], addrs)
    # Format 2's fingerprint (the previous index): HMAC-SHA256 with its keyed inner and
    # outer states computed once, as filter_server/server/suppression_key.py did.
    block = bytes(32 * [98]).ljust(64, b"\\0")
    inner0 = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer0 = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    def hmac_fp(address, scope):
        inner = inner0.copy()
        inner.update(f"{scope}\\0{address}".encode())
        outer = outer0.copy()
        outer.update(inner.digest())
        return int.from_bytes(outer.digest()[:8], "big") >> 1
    assert hmac_fp("a@b.c", "*") == int.from_bytes(
        hmac.digest(b"b" * 32, b"*\\0a@b.c", "sha256")[:8], "big") >> 1
    hmac_cost = per_item(lambda xs: [hmac_fp(a, "*") for a in xs], addrs)
    print(f"figures {opened} {search} {full} {blake} {hmac_cost}", flush=True)
    sys.stdin.readline()
""")


def index_row(n: int, workdir: Path) -> dict:
    rng = np.random.default_rng(n)
    fps = rng.integers(0, 1 << 63, size=n, dtype=np.uint64)
    entries = (fps << np.uint64(1)) | (rng.random(n) < 0.05).astype(np.uint64)
    del fps
    key = FingerprintKey(b"b" * 32)
    path = workdir / f"index-{n}.idx"
    t = time.perf_counter()
    entries.sort()
    index = SortedFingerprints(_unique(entries))
    index.write(path, key, sequence=n)
    build = time.perf_counter() - t
    del entries, index
    procs = [subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, str(REPO), str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(WORKERS)]
    try:
        base = []
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().startswith("base")
            base.append(pss_kib(p.pid))
        for p in procs:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().startswith("mapped")
        pod_kib = sum(pss_kib(p.pid) - b for p, b in zip(procs, base))
        results = []
        for p in procs:  # one at a time: the two would share the CPUs
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("go\n")
            p.stdin.flush()
            results.append(p.stdout.readline().split())
    finally:
        for p in procs:
            p.kill()
            p.wait()
    path.unlink()
    opened = max(float(r[1]) for r in results)
    search = min(float(r[2]) for r in results)
    full = min(float(r[3]) for r in results)
    blake = min(float(r[4]) for r in results)
    hmac_cost = min(float(r[5]) for r in results)
    return {"n": n, "build_s": build, "pod_mib": pod_kib / 1024,
            "bytes_per": pod_kib * 1024 / n, "open_ms": opened * 1000,
            "lookup_us": full * 1e6, "search_us": search * 1e6,
            "blake_us": blake * 1e6, "hmac_us": hmac_cost * 1e6}


BEFORE_SCRIPT = textwrap.dedent("""
    import gc, random, sys, time, timeit
    sys.path.insert(0, sys.argv[1])
    from mailwarden.suppression import Reason, applies
    n = int(sys.argv[2])
    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    before = rss()
    t = time.perf_counter()
    entries = {}
    for i in range(n):   # what main's SuppressionCache built from a snapshot
        entries.setdefault(f"reader{i:09d}@example{i % 997}.com", {})["*"] = Reason.UNSUBSCRIBE
    build = time.perf_counter() - t
    held = rss() - before
    rng = random.Random(1)
    probes = [f"reader{rng.randrange(2 * n):09d}@example{rng.randrange(997)}.com"
              for _ in range(40000)]
    def run():
        for p in probes:
            found = entries.get(p)
            if found:
                applies(found, "news", 1)
    lookup = min(timeit.repeat(run, number=1, repeat=7)) / len(probes)
    print(build, held, lookup)
""")


def before_row(n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", BEFORE_SCRIPT, str(REPO), str(n)],
                         capture_output=True, text=True, check=True).stdout.split()
    build, held, lookup = float(out[0]), int(out[1]), float(out[2])
    return {"n": n, "build_s": build, "pod_mib": WORKERS * held / MIB,
            "bytes_per": WORKERS * held / n, "lookup_us": lookup * 1e6}


def print_index_table(before: dict[int, dict], after: dict[int, dict]) -> None:
    print("\n1. the data structure, 2-worker pod (PSS)")
    print(f"{'size':>5} | {'before: pod MiB':>15} {'B/supp':>7} {'build s':>8} "
          f"{'lookup us':>9} | {'after: pod MiB':>14} {'B/supp':>7} {'build s':>8} "
          f"{'map ms':>7} {'lookup us':>9} {'search us':>9} | fingerprint us: "
          f"{'HMAC (v2)':>9} {'BLAKE2b':>8}")
    for n in sorted(set(before) | set(after)):
        b, a = before.get(n), after.get(n)
        left = (f"{b['pod_mib']:15.0f} {b['bytes_per']:7.0f} {b['build_s']:8.1f} "
                f"{b['lookup_us']:9.2f}") if b else f"{'(not run)':>15} {'':7} {'':8} {'':9}"
        right = (f"{a['pod_mib']:14.1f} {a['bytes_per']:7.2f} {a['build_s']:8.1f} "
                 f"{a['open_ms']:7.2f} {a['lookup_us']:9.2f} {a['search_us']:9.2f} | "
                 f"{'':16}{a['hmac_us']:9.2f} {a['blake_us']:8.2f}") \
            if a else "(not run)"
        print(f"{label(n):>5} | {left} | {right}", flush=True)


# --- 2. end to end -----------------------------------------------------------------------
def fill_store(db: Path, n: int) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO unsubscribe_suppressions (address, scope, reason, source, first_seen,"
            " seq) VALUES (?, '*', 'unsubscribe', 'bench', '2026-01-01T00:00:00+00:00', ?)",
            ((address(i), i + 1) for i in range(n)))
        conn.execute("UPDATE unsubscribe_sequence SET value = ?", (n,))
    conn.close()


def before_tree(ref: str, workdir: Path) -> Path:
    out = workdir / "before"
    out.mkdir()
    # Run from an exported copy of the tree (so edits during a long run do not leak into
    # it), $MAILWARDEN_BENCH_GIT names the repository to take `ref` from.
    repo = os.environ.get("MAILWARDEN_BENCH_GIT", str(REPO))
    archive = subprocess.run(["git", "-C", repo, "archive", ref, "mailwarden",
                              "filter_server", "unsubscribe_store", "mailwarden_local"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def mapped_index_bytes(pids: set[int]) -> int:
    """Size of the suppression index file the workers map (0: none). Its page cache counts
    against the pod's memory limit whether or not a worker has touched a page yet."""
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if line.endswith("suppressions.idx"):
                return Path(line.split(maxsplit=5)[5]).stat().st_size
    return 0


def serve_until_fresh(workdir: Path, store: StoreProcess, n: int, env: dict[str, str],
                      timeout: float, key_file: Path | None = None
                      ) -> tuple[float, float, float, float]:
    """(seconds to FRESH with n entries in every worker, pod PSS MiB, pod RSS MiB, index
    file MiB)."""
    policy_dir = workdir / "policy"
    if not policy_dir.exists():
        write_policy(policy_dir, mini_policy(1))
    started = time.monotonic()
    key_args = ["--suppression-key-file", str(key_file)] if key_file else []
    server = Server(workdir, policy_dir, ["--suppression-store", store.target,
                                          "--drain-seconds", "0", *key_args],
                    workers=WORKERS, env=env)
    try:
        server.wait_serving(timeout)
        wait_for(lambda: server.metric("mailwarden_filter_suppression_cache_fresh") == 1
                 and server.metric("mailwarden_filter_suppression_cache_entries") >= n,
                 timeout, "every worker fresh")
        fresh = time.monotonic() - started
        time.sleep(2)  # the builder process exits; workers settle
        assert server.process is not None
        pids = tree([server.process.pid])
        mem = memory(pids)
        return fresh, mem.pss_kib / 1024, mem.rss_kib / 1024, mapped_index_bytes(pids) / MIB
    finally:
        server.kill()


def wait_artifact(store: StoreProcess, count: int, timeout: float) -> float:
    """Seconds the store took to build its fingerprint snapshot of `count` suppressions
    (from its log, which may hold an earlier store's lines too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in reversed(store.log().splitlines()):
            if f"fingerprint snapshot of {count} suppressions" in line and " built in " in line:
                return float(line.rsplit(" built in ", 1)[1].rstrip("s \n"))
        time.sleep(0.5)
    raise TimeoutError("the store did not build its fingerprint snapshot")


def e2e_rows(sizes: dict[str, list[int]], ref: str, workdir: Path) -> None:
    print("\n2. end to end: SQLite store -> mailwarden serve --workers 2 (pod = process "
          "tree)")
    print(f"    before = --before-ref {ref} (default: main before issue 15, a Watch snapshot "
          "into a dict per worker); watch = this "
          "tree, Watch snapshot into the shared index (no shared key); artifact = this tree, "
          "store and pod share the fingerprint key: the pod downloads the store's fingerprint "
          "snapshot (the store built it beforehand: 'store build s')")
    print("    pod MiB = PSS of the tree less the same pod following an empty store, plus the "
          "index file (page cache)")
    print(f"{'size':>5} {'code':>8} | {'FRESH after s':>13} {'PSS MiB':>8} {'RSS MiB':>8} "
          f"{'index MiB':>9} {'pod MiB':>8} {'B/supp':>7} {'store build s':>13} "
          f"{'empty pod FRESH s':>17}")
    # PYTHONSAFEPATH: `python -m` must not put its working directory (the repository, for
    # the store) before PYTHONPATH.
    before_env = {"PYTHONPATH": str(before_tree(ref, workdir)), "PYTHONSAFEPATH": "1"} \
        if sizes["before"] else {}
    key_file = workdir / "fingerprint-key"
    key_file.write_text("c3" * 32)
    for n in sorted(set().union(*sizes.values())):
        case = workdir / f"e2e-{n}"
        case.mkdir()
        db = case / "store.db"
        subprocess.run([str(Path(sys.executable).parent / "mailwarden"), "unsubscribe-server",
                        "--sqlite-path", str(db), "--migrate-only"], check=True,
                       capture_output=True)
        t = time.monotonic()
        fill_store(db, n)
        print(f"{label(n):>5} (store filled by SQL in {time.monotonic() - t:.0f}s)",
              flush=True)
        empty = case / "empty.db"
        subprocess.run([str(Path(sys.executable).parent / "mailwarden"), "unsubscribe-server",
                        "--sqlite-path", str(empty), "--migrate-only"], check=True,
                       capture_output=True)
        for code, env in (("before", before_env), ("watch", {}), ("artifact", {})):
            if n not in sizes[code]:
                continue
            shared = code == "artifact"
            figures = []
            build = 0.0
            for path, count in ((empty, 0), (db, n)):
                store = StoreProcess(case, ["--store", "sqlite", "--sqlite-path", str(path),
                                            "--no-one-click"] +
                                     (["--fingerprint-key-file", str(key_file)]
                                      if shared else [])).start()
                try:
                    if shared:
                        build = wait_artifact(store, count, timeout=max(300, n / 2000))
                    figures.append(serve_until_fresh(case, store, count, env,
                                                     timeout=max(120, n / 5000),
                                                     key_file=key_file if shared else None))
                finally:
                    store.close()
            (empty_fresh, empty_pss, _, _), (fresh, pss, rss, index) = figures
            pod = pss - empty_pss + index
            print(f"{label(n):>5} {code:>8} | {fresh:13.1f} {pss:8.0f} {rss:8.0f} "
                  f"{index:9.1f} {pod:8.1f} {pod * MIB / n:7.1f} "
                  f"{f'{build:.1f}' if shared else '':>13} {empty_fresh:17.1f}", flush=True)


# --- 3. import into PostgreSQL -----------------------------------------------------------
def run_import(env: dict[str, str], target: str, csv: Path, token: Path) -> tuple[float, int, str]:
    """(seconds, client peak RSS KiB, summary line) of one `mailwarden unsubscribe import`."""
    argv = [sys.executable, "-m", "mailwarden.cli", "unsubscribe", "--target", target,
            "import", str(csv)]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env, "MAILWARDEN_ADMIN_TOKEN":
                                 token.read_text().strip()})
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"import failed ({proc.returncode}): {err.strip()[-500:]}")
    return time.monotonic() - started, peak, out.strip()


def import_rows(sizes_after: list[int], sizes_before: list[int], ref: str,
                workdir: Path) -> None:
    from testkit.pg import PgCluster
    print("\n3. import into PostgreSQL: mailwarden unsubscribe import FILE.csv")
    print(f"{'size':>5} {'code':>6} | {'file MiB':>8} {'seconds':>8} {'rows/s':>9} "
          f"{'client peak RSS MiB':>19} {'re-run s':>8}  re-run says")
    before = workdir / "before"
    before_env = {"PYTHONPATH": str(before if before.exists() else before_tree(ref, workdir)),
                  "PYTHONSAFEPATH": "1"} if sizes_before else {}
    token = workdir / "admin-token"
    token.write_text("bench-admin-token-0123456789abcdef\n")
    for n in sorted(set(sizes_after) | set(sizes_before)):
        csv = workdir / f"import-{n}.csv"
        with open(csv, "w") as out:
            out.write("address,scope,reason\n")
            for i in range(n):
                out.write(f"{address(i)},{'*' if i % 4 else 'news'},"
                          f"{'complaint' if i % 50 == 0 else 'unsubscribe'}\n")
        for code, env in (("before", before_env), ("after", {})):
            if n not in (sizes_before if code == "before" else sizes_after):
                continue
            run_dir = workdir / f"import-{code}-{n}"
            run_dir.mkdir()
            with PgCluster() as pg:
                dsn_file = run_dir / "dsn"
                dsn_file.write_text(pg.create_database(f"imp{n}{code}"))
                store = StoreProcess(run_dir, [
                    "--store", "postgres", "--dsn-file", str(dsn_file), "--no-one-click",
                    "--admin-token-file", str(token)], env={**os.environ, **env}).start()
                try:
                    seconds, peak, _ = run_import(env, store.target, csv, token)
                    again, _, said = run_import(env, store.target, csv, token)
                finally:
                    store.close()
            print(f"{label(n):>5} {code:>6} | {csv.stat().st_size / MIB:8.0f} {seconds:8.1f} "
                  f"{n / seconds:9,.0f} {peak / 1024:19.0f} {again:8.1f}  {said}", flush=True)
        csv.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index-sizes", type=sizes, default=sizes("1M,10M,100M"))
    parser.add_argument("--before-sizes", type=sizes, default=sizes("1M,10M"))
    parser.add_argument("--e2e-sizes", type=sizes, default=sizes("1M,10M"),
                        help="sizes for the pod starting from the store's fingerprint snapshot")
    parser.add_argument("--e2e-watch-sizes", type=sizes, default=sizes("1M"),
                        help="sizes for this tree's pod taking a Watch snapshot (no shared key)")
    parser.add_argument("--e2e-before-sizes", type=sizes, default=sizes("1M"))
    parser.add_argument("--import-sizes", type=sizes, default=sizes("1M"))
    parser.add_argument("--import-before-sizes", type=sizes, default=sizes("200k"))
    parser.add_argument("--before-ref", default="97da8f3",
                        help="git ref of the code measured as 'before' (main before issue 15)")
    args = parser.parse_args()
    print(f"suppression scale, {WORKERS} workers; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="mw-suppression-scale-") as tmp:
        workdir = Path(tmp)
        # `python -m mailwarden.cli` puts its working directory first on sys.path: outside
        # the repository, "before" runs find main's code on PYTHONPATH instead of this tree.
        os.chdir(workdir)
        before = {n: before_row(n) for n in args.before_sizes}
        after = {}
        for n in args.index_sizes:
            after[n] = index_row(n, workdir)
        print_index_table(before, after)
        e2e = {"before": args.e2e_before_sizes, "watch": args.e2e_watch_sizes,
               "artifact": args.e2e_sizes}
        if any(e2e.values()):
            e2e_rows(e2e, args.before_ref, workdir)
        if args.import_sizes or args.import_before_sizes:
            import_rows(args.import_sizes, args.import_before_sizes, args.before_ref, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
