"""How long a filter pod's suppression cache keeps answering SUPPRESSION_FRESH once the
unsubscribe store cannot read its database, and how soon it is FRESH again after.

A real `mailwarden unsubscribe-server` on its own real PostgreSQL (testkit/pg.py), followed
by the real SuppressionCache (heartbeat 0.2 s, so the store sends its 0.5 s minimum). Two
outages in turn: a hang (every postgres process SIGSTOPped, `PgNode.frozen`) and a crash
(SIGKILL, then a restart on the same port). Each is watched for at most --cap seconds; the
cache should leave FRESH after the store's vouching bound (3 s, unsubscribe_store/feed.py)
plus its own stale-after. Before the heartbeat fix it stayed FRESH for the whole outage.

    .venv/bin/python -m benchmarks.store_outage_freshness [--stale-after 1] [--cap 15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from filter_server.server.suppression_cache import SuppressionCache
from testkit.pg import PgCluster
from testkit.store import StoreProcess


def fresh_for(cache: SuppressionCache, cap: float) -> float:
    started = time.monotonic()
    while cache.is_fresh() and time.monotonic() - started < cap:
        time.sleep(0.02)
    return time.monotonic() - started


def fresh_after(cache: SuppressionCache, timeout: float = 60.0) -> float:
    started = time.monotonic()
    while not cache.is_fresh() and time.monotonic() - started < timeout:
        time.sleep(0.02)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stale-after", type=float, default=1.0,
                        help="the cache's stale_after (a filter pod's --suppression-stale-after)")
    parser.add_argument("--cap", type=float, default=15.0,
                        help="watch each outage at most this long")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mw-outage-") as work, PgCluster() as cluster:
        dsn = Path(work) / "dsn"
        dsn.write_text(cluster.create_database("app"))
        store = StoreProcess(Path(work), ["--store", "postgres", "--dsn-file", str(dsn),
                                          "--no-one-click"]).start()
        cache = SuppressionCache(store.target, heartbeat_seconds=0.2,
                                 stale_after=args.stale_after).start()
        try:
            cache.wait_ready(30)
            fresh_after(cache)
            with cluster.primary.frozen():
                figures["hang_fresh_seconds"] = fresh_for(cache, args.cap)
            figures["hang_fresh_again_after_seconds"] = fresh_after(cache)
            cluster.primary.kill9()
            figures["crash_fresh_seconds"] = fresh_for(cache, args.cap)
            cluster.primary.start()
            figures["crash_fresh_again_after_seconds"] = fresh_after(cache)
        finally:
            cache.stop()
            store.close()
    print(json.dumps({"stale_after": args.stale_after, "cap": args.cap,
                      **{k: round(v, 2) for k, v in figures.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
