"""What the mail-server protocol tests share: a policy whose four messages get the four
actions, a `mailwarden serve` with all three protocol ports, and small raw clients."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from testkit.filter import Server, write_policy

REJECT_REASON = "Refused by the Mailwarden test policy"


def protocol_policy(*, remove_suppressed: bool = False) -> dict:
    return {
        "thresholds": {"tag": 3, "quarantine": 8, "reject": 15},
        "rules": [
            {"name": "SUBJ_MONEY", "target": "header", "header": "Subject",
             "pattern": r"(?i)\bfree money\b", "score": 2.0,
             "description": "money in the subject"},
            {"name": "BODY_VIAGRA", "target": "body", "pattern": r"(?i)\bviagra\b",
             "score": 3.0, "description": "pills"},
            {"name": "BODY_HOLD", "target": "body", "pattern": r"(?i)\bhold this\b",
             "score": 9.0},
            {"name": "BODY_REJECT", "target": "body", "pattern": r"(?i)\breject this\b",
             "score": 20.0},
        ],
        "lists": {"block": {"senders": ["spammer@bad.example"], "score": 1.0}},
        "mta": {"rejectReason": REJECT_REASON,
                "removeSuppressedRecipients": remove_suppressed},
    }


def message(subject: str, body: str, *, sender: str = "alice@example.com",
            extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: bob@test.example\r\nSubject: {subject}\r\n"
            f"Message-ID: <{abs(hash(subject + body))}@example.com>\r\n{extra}\r\n"
            f"{body}\r\n").encode()


HAM = message("lunch", "Shall we meet at noon?")
TAGGED = message("FREE MONEY inside", "Cheap viagra today.")
HELD = message("an offer", "Please hold this for me.")
REJECTED = message("an order", "Reject this one, it is spam.")
# message -> the action Classify gives it under protocol_policy()
EXPECTED = {HAM: "ACCEPT", TAGGED: "TAG", HELD: "QUARANTINE", REJECTED: "REJECT"}


def classify(server: Server, raw: bytes, *, mail_from: str = "", recipients=(),
             list_scope: str = ""):
    """Classify over gRPC: the answer every protocol must agree with."""
    from mailwarden.filter.v1 import filter_pb2

    request = filter_pb2.ClassifyRequest(
        request_id="reference", message=raw, list_scope=list_scope,
        envelope=filter_pb2.Envelope(mail_from=mail_from, recipients=list(recipients)))
    return server.stub().Classify(request, timeout=10)


def start_server(tmp_path: Path, *args: str, policy: dict | None = None,
                 workers: int = 1) -> Server:
    policy_dir = tmp_path / f"policy-{len(list(tmp_path.glob('policy-*')))}"
    write_policy(policy_dir, policy or protocol_policy())
    server = Server(tmp_path, policy_dir,
                    ["--milter-port", "0", "--spamd-port", "0", "--rspamd-port", "0",
                     "--drain-seconds", "0", *args], workers)
    try:
        return server.wait_serving()
    except BaseException:
        server.kill()
        raise


def connect(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


# --- milter, as an MTA speaks it -----------------------------------------------------------
def milter_packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


def read_milter_packet(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _exactly(sock, 4)
    (length,) = struct.unpack("!I", head)
    body = _exactly(sock, length)
    return body[:1], body[1:]


def _exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += data
    return out


ALL_ACTIONS = 0x1FF
ALL_PROTOCOL = 0x1FFFFF


class MilterClient:
    """The MTA side of a milter session, for tests that need to misbehave."""

    def __init__(self, port: int, *, actions: int = ALL_ACTIONS, protocol: int = 0) -> None:
        self.sock = connect(port)
        self.sock.sendall(milter_packet(b"O", struct.pack("!III", 6, actions, protocol)))
        command, data = read_milter_packet(self.sock)
        assert command == b"O", (command, data)
        self.version, self.actions, self.protocol = struct.unpack("!III", data[:12])

    def send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(milter_packet(command, data))

    def ask(self, command: bytes, data: bytes = b"") -> tuple[bytes, bytes]:
        self.send(command, data)
        return read_milter_packet(self.sock)

    def message(self, raw: bytes, *, sender: str = "<alice@example.com>",
                recipients: tuple[str, ...] = ("<bob@test.example>",)
                ) -> list[tuple[bytes, bytes]]:
        """One message through the session; the replies to end of message."""
        self.ask(b"C", b"client.example\x004\x30\x39127.0.0.1\x00")
        self.ask(b"H", b"client.example\x00")
        self.ask(b"M", sender.encode() + b"\x00")
        for rcpt in recipients:
            self.ask(b"R", rcpt.encode() + b"\x00")
        head, _, body = raw.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            self.ask(b"L", name + b"\x00" + value.lstrip() + b"\x00")
        self.ask(b"N")
        self.ask(b"B", body)
        self.send(b"E")
        replies = []
        while True:
            command, data = read_milter_packet(self.sock)
            replies.append((command, data))
            if command in (b"c", b"a", b"r", b"t", b"y", b"d"):
                return replies

    def close(self) -> None:
        try:
            self.send(b"Q")
        except OSError:
            pass
        self.sock.close()
