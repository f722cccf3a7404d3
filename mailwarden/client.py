"""The Python client for the filter service, set up the way a sending system should call it.

    from mailwarden.client import FilterClient

    with FilterClient("dns:///mailwarden-default-headless.mail.svc:9090") as client:
        verdict = client.classify(raw_bytes, mail_from="news@shop.example",
                                  recipients=["a@example.com"])
        print(verdict.action, verdict.score, verdict.policy_hash)

- Balances per request: `round_robin` over every address the target resolves to (a
  headless Service's DNS name) or over a list of `host:port` addresses.
- Health-aware: gRPC's client-side health checking watches each replica's
  `grpc.health.v1` status, so a replica that says NOT_SERVING (starting, or draining after
  SIGTERM) gets no new calls while it finishes the ones it has.
- Retries UNAVAILABLE (a replica that died or is not ready) on another replica through the
  gRPC service config's retryPolicy: Classify has no side effects, so that is always safe.
- Every call carries a deadline, which also bounds its retries.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import grpc

from mailwarden.filter.v1 import filter_pb2, filter_pb2_grpc
from mailwarden.wire import FILTER_SERVICE as SERVICE_NAME
from mailwarden.wire import MESSAGE_BYTES_METADATA, REQUEST_BYTES_METADATA

DEFAULT_DEADLINE_SECONDS = 5.0
DEFAULT_MAX_ATTEMPTS = 4          # the gRPC service config allows at most 5
DNS_MIN_RERESOLUTION_MS = 1000    # gRPC's default is 30000 (see FilterClient)
# How soon a replica that vanished without closing its connections (a node losing power or
# its link) is given up: after KEEPALIVE_TIME_MS with nothing read on a connection that has
# calls in flight, the client pings, and closes the connection when no answer comes within
# KEEPALIVE_TIMEOUT_MS; its calls are then retried on other replicas (UNAVAILABLE). So a
# vanished replica costs its calls about 0.75 s (docs/fault.md, node loss, vanished;
# with gRPC's usual 30 s / 10 s it was 10 s of DEADLINE_EXCEEDED). Not a ping storm: gRPC
# pings only connections that have calls in flight and read nothing for KEEPALIVE_TIME_MS
# (any frame read restarts the timer), and after the first ping at most once a second until
# data arrives -- which the filter server permits (its min_ping_interval_without_data is
# 500 ms, filter_server/server/worker.py); tests/mailwarden/test_client.py checks that a
# pinging client is not sent GOAWAY too_many_pings. The timeout is also the connection's
# TCP_USER_TIMEOUT: 500 ms rides out one TCP retransmission (200 ms minimum RTO on Linux).
# The trade-off (docs/fault.md): a replica starved of CPU acks pings late. The fault suite's
# surge at 5x capacity on a 2-core machine shared at load average 17-20 lost 2-5 % of its
# calls to DEADLINE_EXCEEDED with 500 ms (two runs; 30 s / 10 s lost none there), none at
# load average 5; 100 ms / 750 ms made the vanished node's slowest call 1.03 s (one run).
KEEPALIVE_TIME_MS = 250
KEEPALIVE_TIMEOUT_MS = 500
_MAIL_CLASSES = {"bulk": filter_pb2.BULK, "transactional": filter_pb2.TRANSACTIONAL,
                 "": filter_pb2.MAIL_CLASS_UNSPECIFIED}


class ClassifyError(Exception):
    """A call failed; `code` is the grpc.StatusCode, `details` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, details: str, request_id: str = "") -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details
        self.request_id = request_id


def service_config(*, max_attempts: int = DEFAULT_MAX_ATTEMPTS, health_check: bool = True,
                   wait_for_ready: bool = True) -> str:
    """The gRPC service config (JSON) the client channel runs with."""
    method = {
        "name": [{"service": SERVICE_NAME}],
        # Wait (within the deadline) for a ready replica instead of failing at once while
        # every replica is starting or reconnecting.
        "waitForReady": wait_for_ready,
    }
    if max_attempts > 1:
        method["retryPolicy"] = {
            "maxAttempts": max_attempts, "initialBackoff": "0.02s", "maxBackoff": "0.5s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method]}
    if health_check:
        config["healthCheckConfig"] = {"serviceName": SERVICE_NAME}
    return json.dumps(config)


def _split_host_port(address: str) -> tuple[str, str]:
    address = address.strip()
    if address.startswith("["):  # [v6]:port
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host, port


def target_for(addresses: Sequence[str]) -> str:
    """A gRPC target balancing over `addresses` (`host:port` each, IP literals)."""
    if not addresses:
        raise ValueError("no addresses given")
    parsed = [_split_host_port(a) for a in addresses]
    families = set()
    for host, _port in parsed:
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            if len(parsed) == 1:
                return f"dns:///{host}:{_port}"
            raise ValueError(f"{host!r} is a name: a list of addresses must be IP literals; "
                             f"for a name use one dns:///{host}:{_port} target "
                             f"(it balances over every address the name resolves to)") from None
    if families == {4}:
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in parsed)
    if families == {6}:
        return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in parsed)
    raise ValueError("mix of IPv4 and IPv6 addresses; give one family")


def normalize_target(target: str) -> str:
    """Accept `a:p,b:p` lists too (turned into an ipv4:/ipv6: target)."""
    if "," in target and ":///" not in target and not target.startswith(("ipv4:", "ipv6:")):
        return target_for(target.split(","))
    return target


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class FilterClient:
    """A channel to the filter service. Thread-safe; make one and share it."""

    def __init__(self, target: str | None = None, *, addresses: Sequence[str] | None = None,
                 deadline: float = DEFAULT_DEADLINE_SECONDS,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, health_check: bool = True,
                 wait_for_ready: bool = True, tls: bool = False,
                 ca_cert: bytes | str | Path | None = None,
                 client_cert: bytes | str | Path | None = None,
                 client_key: bytes | str | Path | None = None,
                 server_name: str | None = None,
                 options: Sequence[tuple[str, object]] = ()) -> None:
        """Connect to `target` (a gRPC target: `dns:///name:port`, `host:port`,
        `ipv4:a:p,b:p`, or `a:p,b:p`) or to `addresses` (a list of `ip:port`).

        TLS is on when `tls` is true or any certificate is given: `ca_cert` verifies the
        server (system roots when None), `client_cert`+`client_key` are for mutual TLS,
        `server_name` overrides the name checked in the server certificate. Certificates
        are PEM bytes or file paths."""
        if addresses is not None and target is None:
            self.target = target_for(addresses)
        elif target is not None and addresses is None:
            self.target = normalize_target(target)
        else:
            raise ValueError("give exactly one of target or addresses")
        self.deadline = deadline
        channel_options: list[tuple[str, object]] = [
            ("grpc.service_config", service_config(
                max_attempts=max_attempts, health_check=health_check,
                wait_for_ready=wait_for_ready)),
            ("grpc.service_config_disable_resolution", 1),  # ours, not one from DNS TXT
            ("grpc.enable_retries", 1),
            # A retried call's request must stay buffered until it is answered; the default
            # (256 KiB) would make large messages unretryable.
            ("grpc.per_rpc_retry_buffer_size", 64 * 1024 * 1024),
            ("grpc.retry_buffer_size", 256 * 1024 * 1024),
            ("grpc.max_send_message_length", -1),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            # gRPC re-resolves a dns:/// target when a connection closes (a pod stopping,
            # a max-connection-age GOAWAY), but by default at most once every 30 s. During
            # a rollout every old pod can stop within 30 s of the last resolution; the
            # client then holds only addresses of stopped pods and calls stall until the
            # deadline although the new pods are ready (measured in tests/fault). One query
            # a second at most is nothing for cluster DNS.
            ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_RERESOLUTION_MS),
        ]
        if server_name:
            channel_options.append(("grpc.ssl_target_name_override", server_name))
        # gRPC keeps the first of two options with the same key, so a caller's option
        # must replace ours rather than follow it (a 1 s keepalive was silently ignored).
        channel_options = list({**dict(channel_options), **dict(options)}.items())
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key go together")
        if tls or ca_cert is not None or client_cert is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(ca_cert), private_key=_pem(client_key),
                certificate_chain=_pem(client_cert))
            self._channel = grpc.secure_channel(self.target, credentials, channel_options)
        else:
            self._channel = grpc.insecure_channel(self.target, channel_options)
        self._stub = filter_pb2_grpc.FilterStub(self._channel)

    # --- calls ----------------------------------------------------------------------------
    @staticmethod
    def request(message: bytes, *, mail_from: str = "", recipients: Iterable[str] = (),
                client_ip: str = "", helo: str = "", mail_class: str | int = "",
                list_scope: str = "", request_id: str | None = None
                ) -> filter_pb2.ClassifyRequest:
        """Build a ClassifyRequest (a random request_id unless one is given)."""
        if isinstance(mail_class, str):
            try:
                mail_class = _MAIL_CLASSES[mail_class.lower()]
            except KeyError:
                raise ValueError(f"mail_class must be 'bulk' or 'transactional', "
                                 f"not {mail_class!r}") from None
        return filter_pb2.ClassifyRequest(
            request_id=request_id if request_id is not None else uuid.uuid4().hex,
            message=message,
            envelope=filter_pb2.Envelope(mail_from=mail_from, recipients=list(recipients),
                                         client_ip=client_ip, helo=helo),
            mail_class=mail_class, list_scope=list_scope)

    def classify(self, message: bytes, *, mail_from: str = "", recipients: Iterable[str] = (),
                 client_ip: str = "", helo: str = "", mail_class: str | int = "",
                 list_scope: str = "", request_id: str | None = None,
                 deadline: float | None = None) -> filter_pb2.ClassifyResponse:
        """Classify one raw RFC 5322 message; raises ClassifyError when the call fails."""
        request = self.request(message, mail_from=mail_from, recipients=recipients,
                               client_ip=client_ip, helo=helo, mail_class=mail_class,
                               list_scope=list_scope, request_id=request_id)
        try:
            return self._stub.Classify(request, timeout=deadline or self.deadline,
                                       metadata=((MESSAGE_BYTES_METADATA, str(len(message))),
                                                 (REQUEST_BYTES_METADATA,
                                                  str(request.ByteSize()))))
        except grpc.RpcError as exc:
            raise ClassifyError(exc.code(), exc.details() or "", request.request_id) from None

    def classify_stream(self, items: Iterable[bytes | filter_pb2.ClassifyRequest], *,
                        deadline: float | None = None, max_request_bytes: int | None = None
                        ) -> Iterator[filter_pb2.ClassifyResponse]:
        """Classify many messages over one ClassifyStream call; responses come back in
        order. `items` are raw messages or requests from `FilterClient.request`. `deadline`
        covers the whole stream (none by default). A stream stays on one replica and is
        not retried; for balancing and retries per message, use `classify`.

        `max_request_bytes`: the size of the largest request the stream will send (a
        message and its envelope; `FilterClient.request(...).ByteSize()`). The server
        reserves that much memory before each message instead of room for the largest
        message it accepts, so streams of small messages do not wait for memory; a larger
        request ends the stream with INVALID_ARGUMENT. The server ends a stream that sends
        nothing for its receive time limit (10 s by default)."""
        requests = (item if isinstance(item, filter_pb2.ClassifyRequest)
                    else self.request(item) for item in items)
        metadata = () if max_request_bytes is None else \
            ((REQUEST_BYTES_METADATA, str(max_request_bytes)),)
        try:
            yield from self._stub.ClassifyStream(requests, timeout=deadline, metadata=metadata)
        except grpc.RpcError as exc:
            raise ClassifyError(exc.code(), exc.details() or "") from None

    def wait_until_ready(self, timeout: float) -> None:
        """Block until the channel has a connection (raises ClassifyError on timeout)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ClassifyError(grpc.StatusCode.UNAVAILABLE,
                                f"no replica of {self.target} ready within {timeout:g}s") from None

    # --- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "FilterClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def verdict_dict(response: filter_pb2.ClassifyResponse) -> dict:
    """A ClassifyResponse as plain JSON-ready data (enum names, not numbers)."""
    return {
        "request_id": response.request_id,
        "action": filter_pb2.Action.Name(response.action),
        "score": round(response.score, 3),
        "spam_probability": round(response.spam_probability, 4),
        "policy_hash": response.policy_hash,
        "hits": [{"name": h.name, "score": round(h.score, 3), "description": h.description}
                 for h in response.hits],
        "suppressed_recipients": list(response.suppressed_recipients),
        "unparseable_recipients": list(response.unparseable_recipients),
        "suppression_state": filter_pb2.SuppressionState.Name(response.suppression_state),
        "authentication_results": response.authentication_results,
    }
