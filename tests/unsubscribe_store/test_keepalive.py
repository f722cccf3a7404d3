"""gRPC keepalive between the store and its clients (mailwarden/keepalive.py).

- A client whose connection to the store goes silent (nothing passes, nothing is closed,
  the TCP peer — here a relay, as a hung proxy or process would — still acknowledges)
  notices it within seconds: `mailwarden unsubscribe watch` through a relay that goes
  silent exits with UNAVAILABLE instead of waiting forever. Without keepalive it waits
  forever: a Watch stream only reads. (Without `grpc.http2.ping_timeout_ms` too: gRPC
  waits a minute for the unanswered ping.)
- The store takes the pings those clients send on a silent stream: a call on which nothing
  moves for seconds (as a Watch stream while the store withholds heartbeats) is not failed
  with GOAWAY too_many_pings (gRPC's default allows one ping per 5 minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from mailwarden.keepalive import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, keepalive_options
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from testkit.relay import Relay
from testkit.store import REPO
from mailwarden.keepalive import SERVER_PING_OPTIONS

# Keepalive's ping and its timeout, plus a loaded machine's slack.
NOTICE_LIMIT = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 + 4.0


def test_a_watch_notices_a_silently_dropped_connection(tmp_path):
    db = tmp_path / "store.db"
    from testkit.store import StoreProcess
    store = StoreProcess(tmp_path, ["--store", "sqlite", "--sqlite-path", str(db),
                                    "--no-one-click"]).start()
    try:
        with Relay(store.target) as relay:
            watch = subprocess.Popen(
                [sys.executable, "-m", "mailwarden.cli", "unsubscribe", "--target",
                 relay.target, "watch"], cwd=REPO, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, env=os.environ.copy())
            try:
                store.stub().Unsubscribe(pb.UnsubscribeRequest(
                    address="seen@example.com", scope="news", source="test"), timeout=30)
                line = watch.stdout.readline()  # the stream is up and passing changes
                assert "seen@example.com" in line, watch.stderr.read() if not line else line
                relay.blackhole()
                dropped = time.monotonic()
                try:
                    code = watch.wait(NOTICE_LIMIT + 10)
                except subprocess.TimeoutExpired:
                    code = None
                noticed = time.monotonic() - dropped
            finally:
                watch.kill()
                watch.wait()
            stderr = watch.stderr.read()
        print(f"\nsilently dropped connection noticed by `unsubscribe watch` after "
              f"{noticed:.2f} s")
        assert code is not None, "`mailwarden unsubscribe watch` never noticed the " \
            "connection was gone"
        assert code != 0 and "UNAVAILABLE" in stderr and "Traceback" not in stderr, stderr
        assert noticed <= NOTICE_LIMIT, f"noticed only after {noticed:.1f} s"
    finally:
        store.close()


def test_the_store_takes_the_pings_of_a_silent_call():
    """The store's own server options (not a whole store: its calls are never silent on
    purpose) with a GetStatus that answers after 7 s, called with the clients' keepalive
    at its 1 s floor. gRPC's default policy lets two pings pass, then counts strikes and
    sends GOAWAY too_many_pings at the third (about 6 s here; 12 s at the clients' 2 s):
    that failed this call (UNAVAILABLE) before the store allowed pings, as it would fail a
    `mailwarden unsubscribe watch` through a database outage."""
    quiet_seconds = 7.0

    def slow_status(_request, _context) -> pb.StoreStatus:
        time.sleep(quiet_seconds)
        return pb.StoreStatus(ready=True)

    handler = grpc.method_handlers_generic_handler(
        pb.DESCRIPTOR.services_by_name["UnsubscribeStore"].full_name,
        {"GetStatus": grpc.unary_unary_rpc_method_handler(
            slow_status, request_deserializer=pb.GetStatusRequest.FromString,
            response_serializer=pb.StoreStatus.SerializeToString)})
    server = grpc.server(ThreadPoolExecutor(2), options=SERVER_PING_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}",
                                   keepalive_options(1000, 1000)) as channel:
            status = channel.unary_unary(
                f"/{pb.DESCRIPTOR.services_by_name['UnsubscribeStore'].full_name}/GetStatus",
                request_serializer=pb.GetStatusRequest.SerializeToString,
                response_deserializer=pb.StoreStatus.FromString)
            started = time.monotonic()
            assert status(pb.GetStatusRequest(), timeout=30).ready
            assert time.monotonic() - started >= quiet_seconds
    finally:
        server.stop(0)
