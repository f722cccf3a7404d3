"""Mailwarden's gRPC API (`mailwarden.filter.v1.Filter/Classify`) with grpc.aio.

Uses the generated messages directly (not the client library), and pre-serializes every
request once so the load generator spends no CPU encoding protobufs during a run. Each
session owns its own channel (its own HTTP/2 connection: `grpc.use_local_subchannel_pool`
stops gRPC from sharing one connection between channels), so a server with several worker
processes behind one port gets its load spread across them.

The verdict: spam when the action is not ACCEPT (TAG, QUARANTINE or REJECT).
"""

from __future__ import annotations

import grpc

from benchmarks.clients import ProtocolError, Verdict
from benchmarks.messages import Message
from mailwarden.filter.v1 import filter_pb2

METHOD = "/mailwarden.filter.v1.Filter/Classify"
CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def build_request(message: Message) -> bytes:
    request = filter_pb2.ClassifyRequest(
        request_id=message.name, message=message.raw,
        envelope=filter_pb2.Envelope(mail_from=message.mail_from,
                                     recipients=[message.rcpt] if message.rcpt else []))
    return request.SerializeToString()


def to_verdict(response: filter_pb2.ClassifyResponse) -> Verdict:
    if response.action == filter_pb2.ACTION_UNSPECIFIED:
        raise ProtocolError("Classify answered without an action")
    action = filter_pb2.Action.Name(response.action)
    return Verdict(response.action != filter_pb2.ACCEPT, response.score, action,
                   len(response.hits))


class MailwardenSession:
    def __init__(self, target: str, client: "MailwardenClient", timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.call = self.channel.unary_unary(
            METHOD, request_serializer=None,
            response_deserializer=filter_pb2.ClassifyResponse.FromString)

    async def classify(self, message: Message) -> Verdict:
        request = self.client.encoded.get(message.name)
        if request is None:
            request = self.client.encoded[message.name] = build_request(message)
        response = await self.call(request, timeout=self.timeout)
        if self.client.expected_hash and response.policy_hash != self.client.expected_hash:
            raise ProtocolError(f"answered by policy {response.policy_hash!r}, expected "
                                f"{self.client.expected_hash!r}")
        self.client.policy_hashes.add(response.policy_hash)
        return to_verdict(response)

    async def close(self) -> None:
        await self.channel.close()


class MailwardenClient:
    name = "Mailwarden"

    def __init__(self, port: int, host: str = "127.0.0.1", *, expected_hash: str = "",
                 timeout: float = 60.0) -> None:
        self.target = f"{host}:{port}"
        self.expected_hash = expected_hash
        self.timeout = timeout
        self.encoded: dict[str, bytes] = {}
        self.policy_hashes: set[str] = set()

    def preencode(self, messages: list[Message]) -> None:
        for message in messages:
            self.encoded[message.name] = build_request(message)

    async def session(self) -> MailwardenSession:
        return MailwardenSession(self.target, self, self.timeout)

    async def close(self) -> None:
        return None
