"""Load-generator clients, one per system, each speaking the system's native protocol.

A client opens sessions; each concurrent worker of the load generator owns one session
(one connection where the protocol keeps connections), so a multi-process server sees its
load spread the way a fleet of MTAs would spread it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from benchmarks.messages import Message


@dataclass(frozen=True)
class Verdict:
    is_spam: bool     # the system's own spam decision (see docs/benchmarks.md)
    score: float
    label: str        # the raw verdict: spamd "True"/"False", Rspamd's action, Mailwarden's
    hits: int = -1    # rules/symbols reported (-1: the protocol does not list them)


class ProtocolError(RuntimeError):
    """The server answered something this client cannot read."""


class Session(Protocol):
    async def classify(self, message: Message) -> Verdict: ...

    async def close(self) -> None: ...


class Client(Protocol):
    name: str

    async def session(self) -> Session: ...

    async def close(self) -> None: ...
