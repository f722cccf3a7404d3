"""Prometheus metrics of the unsubscribe server (served on --metrics-address)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# No `<name>_created` gauge beside every counter and histogram: Prometheus' text format
# shows them as separate metrics no rule or dashboard uses (the filter server does the same).
disable_created_metrics()

WRITES = Counter("mailwarden_unsubscribe_writes_total",
                 "Write requests by method and outcome (new, replay, unavailable)",
                 ["method", "outcome"])
ACK_SECONDS = Histogram("mailwarden_unsubscribe_ack_seconds",
                        "Time from an Unsubscribe request to its acknowledgement (committed)",
                        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
ONECLICK = Counter("mailwarden_unsubscribe_oneclick_total",
                   "One-click POSTs by outcome (recorded, replay, recorded_expired, "
                   "replay_expired, unknown_key, rejected, unavailable, bad_request)", ["outcome"])
WATCHERS = Gauge("mailwarden_unsubscribe_watchers", "Open Watch streams")
SLOW_CONSUMERS = Counter("mailwarden_unsubscribe_slow_consumers_total",
                         "Watch and Export streams ended because the consumer did not read "
                         "for --watch-send-timeout seconds")
READY = Gauge("mailwarden_unsubscribe_ready", "1 when the store reports Ready")
HEAD = Gauge("mailwarden_unsubscribe_head_sequence", "Last committed change sequence")
FEED_CONFIRMED_AGE = Gauge("mailwarden_unsubscribe_feed_confirmed_age_seconds",
                           "Seconds since the change feed last read the database's head; "
                           "above 3 s (3 poll intervals) Watch heartbeats are withheld and "
                           "the filter pods' caches go stale (+Inf before the first read)")
SYNC_STANDBYS = Gauge("mailwarden_unsubscribe_sync_standbys",
                      "Standbys the database reports in synchronous replication")
REPLICATION_LAG = Gauge("mailwarden_unsubscribe_replication_lag_seconds",
                        "Largest replay lag of the database's streaming standbys "
                        "(pg_stat_replication.replay_lag; 0 when caught up, idle or none)")
STORE_INFO = Gauge("mailwarden_unsubscribe_store_info",
                   "Always 1; labels say the backend and the durability this store requires",
                   ["backend", "durability"])
HTTP_CONNECTIONS = Gauge("mailwarden_unsubscribe_http_connections",
                         "Open connections to the one-click HTTP listener")
HTTP_REJECTED = Counter("mailwarden_unsubscribe_http_rejected_total",
                        "One-click HTTP connections and requests ended by the server's limits "
                        "or the client: body_timeout, evicted (over the "
                        "connection cap), disconnected, malformed", ["reason"])
DENIED = Counter("mailwarden_unsubscribe_denied_total",
                 "Calls of admin methods (Import, Export, Resubscribe) refused: no admin "
                 "credential or client certificate", ["method"])
FINGERPRINT_SNAPSHOTS = Counter(
    "mailwarden_unsubscribe_fingerprint_snapshots_total",
    "FingerprintSnapshot calls by outcome: sent (a filter pod's index, in one transfer), "
    "no_key (this store has no --fingerprint-key-file), other_key (the pod holds another "
    "fingerprint key than the store's: it takes a Watch snapshot instead and cannot apply "
    "forgotten suppressions)", ["outcome"])
for _outcome in ("sent", "no_key", "other_key"):
    FINGERPRINT_SNAPSHOTS.labels(_outcome)
COMPACTED_CHANGES = Counter("mailwarden_unsubscribe_compacted_changes",
                            "Change-log rows removed by compaction")
COMPACTED_KEYS = Counter("mailwarden_unsubscribe_compacted_idempotency_keys",
                         "Idempotency keys removed by compaction (past their retention)")
