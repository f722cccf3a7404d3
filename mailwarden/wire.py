"""Wire constants: the names and numbers that two processes of Mailwarden must agree on.

Each is written here once and imported by both sides — the filter server and its client, the
operator and the pods it renders, the pods and whoever scrapes them — so a rename cannot
break one side silently. Plain values only: this module imports nothing.
"""

from __future__ import annotations

# --- gRPC services and call metadata -------------------------------------------------------
FILTER_SERVICE = "mailwarden.filter.v1.Filter"
UNSUBSCRIBE_SERVICE = "mailwarden.unsubscribe.v1.UnsubscribeStore"
# Call metadata announcing the message's size: the server reserves memory to receive it
# before it arrives, and without this must reserve for the largest message allowed (so
# small messages wait behind large ones when memory is short).
MESSAGE_BYTES_METADATA = "mailwarden-message-bytes"
# ... and the whole request's size (message and envelope), which the server reserves for
# exactly. On a ClassifyStream: the size of its largest request. A request larger than
# announced is refused (INVALID_ARGUMENT).
REQUEST_BYTES_METADATA = "mailwarden-request-bytes"

# --- ports ---------------------------------------------------------------------------------
# What the operator renders (containerPorts, Services, probes) and what the servers listen
# on by default, so `mailwarden serve` outside a cluster answers where clients look.
FILTER_GRPC_PORT = 9090
FILTER_METRICS_PORT = 9091
# Mail-server protocols (SpamPolicy spec.protocols, `mailwarden serve --<name>-port`): the
# container ports, and the Service ports MTAs are configured with (spamd's registered 783
# needs no privilege on a Service; the container listens unprivileged).
FILTER_MILTER_PORT = 11332
FILTER_SPAMD_PORT = 7830
FILTER_SPAMD_SERVICE_PORT = 783
FILTER_RSPAMD_PORT = 11333
# Plaintext grpc.health.v1 of a filter pod whose gRPC port is behind TLS (probes).
FILTER_HEALTH_PORT = 9092
STORE_GRPC_PORT = 50061
STORE_HTTP_PORT = 8080
STORE_METRICS_PORT = 9091

# --- environment variables -----------------------------------------------------------------
# The filter pod's memory limit in bytes; the operator sets it from the container's
# `resources.limits.memory` (resourceFieldRef), the server sizes its message budget from it.
MEMORY_LIMIT_ENV = "MAILWARDEN_MEMORY_LIMIT_BYTES"
# The unsubscribe store's PostgreSQL DSN, and the credential Resubscribe calls present
# (read by `mailwarden unsubscribe-server`, and by `mailwarden unsubscribe resubscribe`).
STORE_DSN_ENV = "MAILWARDEN_STORE_DSN"
ADMIN_TOKEN_ENV = "MAILWARDEN_ADMIN_TOKEN"
RESUBSCRIBE_TOKEN_ENV = "MAILWARDEN_RESUBSCRIBE_TOKEN"  # the admin credential's former name

# --- metrics other processes read ----------------------------------------------------------
# Filter pod gauges the operator scrapes for the SpamPolicy's SuppressionFresh condition.
SUPPRESSION_CACHE_FRESH = "mailwarden_filter_suppression_cache_fresh"
SUPPRESSION_CACHE_AGE_SECONDS = "mailwarden_filter_suppression_cache_age_seconds"
SUPPRESSION_CACHE_CONNECTED = "mailwarden_filter_suppression_cache_connected"
SUPPRESSION_CACHE_LAG_SEQUENCES = "mailwarden_filter_suppression_cache_lag_sequences"
# Filter pod metrics local mode reads to show what each replica served. The requests
# counter is exposed (and scraped) with its `_total` suffix.
FILTER_REQUESTS_TOTAL = "mailwarden_filter_requests_total"
FILTER_POLICY_INFO = "mailwarden_filter_policy_info"
