"""gRPC keepalive for the clients of the store and of the learning service: the filter pods'
Watch stream to the unsubscribe store (suppression cache, fingerprint snapshot), the
`mailwarden unsubscribe ...` commands and `mailwarden learn`.

Without keepalive a connection whose peer vanished without closing it (a node losing power
or its link, a NAT or firewall dropping the flow, a hung process or proxy whose TCP still
acknowledges) is noticed only when TCP gives up on data it sent — about 15 minutes — or
never, for a client that only waits to read: a `mailwarden
unsubscribe watch`, an export, or a Watch stream while the store withholds heartbeats
because it cannot read its database (unsubscribe_store/feed.py). With it the client pings
after ``KEEPALIVE_TIME_MS`` with nothing read on a connection that has a call in flight,
and closes the connection when no answer comes within ``KEEPALIVE_TIMEOUT_MS`` (also its
TCP_USER_TIMEOUT): the call fails with UNAVAILABLE about 5 s after the peer went silent,
and the caller reconnects or says so.

Not a ping storm: a Watch stream reads a heartbeat every second while the store is well,
so it never pings then; a silent one pings every ``KEEPALIVE_TIME_MS``. Both servers take
client pings up to one per 500 ms without data (``grpc.http2.min_ping_interval_without_data_ms``
in unsubscribe_store/server.py and filter_server/server/worker.py); a client pinging more
often than its server allows is sent GOAWAY too_many_pings, which fails every call on the
connection. ``grpc.http2.max_pings_without_data`` 0 lifts gRPC's own cap of two pings per
message the client sends: a Watch or an export sends one message and then only reads.

The balancing filter client (mailwarden/client.py) pings much sooner (250 ms / 500 ms): its
calls are short and a vanished replica must cost them under a second, not five.
"""

from __future__ import annotations

KEEPALIVE_TIME_MS = 2_000
KEEPALIVE_TIMEOUT_MS = 3_000


def keepalive_options(time_ms: int = KEEPALIVE_TIME_MS,
                      timeout_ms: int = KEEPALIVE_TIMEOUT_MS) -> list[tuple[str, object]]:
    """Channel options: ping a connection with a call in flight after ``time_ms`` with
    nothing read, give it up after ``timeout_ms`` without an answer."""
    if time_ms < 1000 or timeout_ms <= 0:
        # Under a second the servers' 500 ms allowance leaves no room for jitter.
        raise ValueError("keepalive time must be at least 1000 ms and its timeout positive")
    return [("grpc.keepalive_time_ms", time_ms),
            ("grpc.keepalive_timeout_ms", timeout_ms),
            ("grpc.http2.max_pings_without_data", 0),
            # What closes a connection whose ping is not answered while the peer's TCP
            # still acknowledges (a hung process or proxy): gRPC (1.85) waits for a ping ack
            # this long, a minute by default — keepalive_timeout_ms alone only sets
            # TCP_USER_TIMEOUT, which such a peer never trips (seen: `unsubscribe watch`
            # through a relay gone silent still waiting after 19 s; 5.3 s with this).
            ("grpc.http2.ping_timeout_ms", timeout_ms)]


# What both servers (filter pods, unsubscribe store) take and send. They ping idle clients
# (every 60 s, 20 s to answer) to let go of connections whose client vanished, and take
# client pings up to one per 500 ms without data: the balancing client pings after 250 ms
# and then at most once a second (gRPC core's floor), these clients after 2 s; gRPC's
# default (one per 5 minutes) answers the third with GOAWAY too_many_pings, failing every
# call on the connection. The key is gRPC core's
# GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS spelling: the similar-looking
# "grpc.http2.min_recv_ping_interval_without_data_ms" is silently ignored
# (tests/mailwarden/test_client.py, tests/unsubscribe_store/test_keepalive.py).
SERVER_PING_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
]
