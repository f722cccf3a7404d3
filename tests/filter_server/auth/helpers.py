"""Run both phases of authentication against a DNS server, as a worker would."""

from __future__ import annotations

import dataclasses
from collections import Counter

from filter_server.auth.evaluate import AuthOutcome, AuthSettings, evaluate
from filter_server.auth.gather import Request
from filter_server.auth.service import Authenticator
from filter_server.message import parse_message


class RecordingMetrics:
    def __init__(self) -> None:
        self.lookups: Counter[str] = Counter()
        self.temperrors: Counter[str] = Counter()
        self.gathers: list[float] = []

    def dns_lookup(self, outcome: str, seconds: float) -> None:
        self.lookups[outcome] += 1

    def gathered(self, seconds: float, temperrors: list[str]) -> None:
        self.gathers.append(seconds)
        self.temperrors.update(temperrors)


def settings(servers: list[str], **overrides: object) -> AuthSettings:
    base = AuthSettings(enabled=True, authserv_id="mx.test", servers=tuple(servers),
                        timeout_seconds=1.0, budget_seconds=2.0)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def authenticate(authenticator: Authenticator, config: AuthSettings, raw: bytes, *,
                 ip: str = "", mail_from: str = "", helo: str = "", bulk: bool = False,
                 recipients: tuple[str, ...] = (), list_scope: str = "",
                 deadline_left: float | None = None) -> AuthOutcome:
    evidence = authenticator.gather(
        Request(raw=raw, mail_from=mail_from, helo=helo, client_ip=ip, bulk=bulk,
                recipients=recipients, list_scope=list_scope), config, deadline_left)
    parsed = parse_message(raw)
    return evaluate(raw, evidence, config, body_text=parsed.body_text, uris=parsed.uris)


def names(outcome: AuthOutcome) -> set[str]:
    return {name for name, _detail in outcome.rules}
