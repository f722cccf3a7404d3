"""Phase 1: everything authentication needs from DNS (and the one-click token's check),
gathered asynchronously within one message's time budget."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from filter_server.auth import dmarc
from filter_server.auth.dkim import key_requests
from filter_server.auth.headers import HeaderField, from_domains, header_fields, sender_domain
from filter_server.auth.resolver import ERROR, Answer, Resolver
from filter_server.auth.spf import SpfResult, check_host, valid_domain
from mailwarden.unsubscribe_headers import token_from_url


@dataclass(frozen=True)
class TokenCheck:
    """The one-click token of a List-Unsubscribe https URI, as the store's keys see it."""

    status: str               # valid, invalid, unchecked (no keys), absent (no https URI)
    address: str = ""
    scope: str = ""


class TokenVerifier(Protocol):
    def __call__(self, token: str) -> tuple[str, str] | None:
        """(address, scope) of a token that verifies, else None."""


@dataclass
class Evidence:
    fields: list[HeaderField]
    spf: SpfResult | None = None          # MAIL FROM identity (postmaster@HELO when null)
    helo: SpfResult | None = None
    spf_domain: str = ""                  # the domain SPF checked for MAIL FROM
    mail_from: str = ""                   # the envelope sender, lower-case, no <>
    from_domains: list[str] = field(default_factory=list)
    from_count: int = 0
    keys: dict[str, Answer] = field(default_factory=dict)
    dmarc: dict[str, Answer] = field(default_factory=dict)
    token: TokenCheck | None = None
    bulk: bool = False                    # the bulk gate applies to this message
    recipients: tuple[str, ...] = ()
    list_scope: str = ""
    seconds: float = 0.0
    lookups_left_unanswered: int = 0


@dataclass(frozen=True)
class Request:
    raw: bytes
    mail_from: str
    helo: str
    client_ip: str
    bulk: bool                # the bulk gate applies (mail_class BULK, gate enabled)
    recipients: tuple[str, ...] = ()
    list_scope: str = ""


async def gather(request: Request, resolver: Resolver, *, deadline: float,
                 verify_token: TokenVerifier | None) -> Evidence:
    started = time.monotonic()
    fields = header_fields(request.raw)
    evidence = Evidence(fields, bulk=request.bulk, recipients=request.recipients,
                        list_scope=request.list_scope)
    evidence.from_domains, evidence.from_count = from_domains(fields)
    jobs: list[asyncio.Future] = []

    helo = request.helo.strip().lower().rstrip(".")
    if request.client_ip:
        mail_from = request.mail_from.strip().strip("<>").strip()
        domain = sender_domain(mail_from) if mail_from else helo
        sender = mail_from if mail_from else f"postmaster@{helo}"
        evidence.spf_domain = domain
        evidence.mail_from = mail_from.lower()

        async def spf_mail_from() -> None:
            if domain:
                evidence.spf = await check_host(request.client_ip, domain, sender, helo=helo,
                                                resolver=resolver, deadline=deadline)
            else:
                evidence.spf = SpfResult("none", "", "no MAIL FROM or HELO domain")

        async def spf_helo() -> None:
            if valid_domain(helo):
                evidence.helo = await check_host(request.client_ip, helo,
                                                 f"postmaster@{helo}", helo=helo,
                                                 resolver=resolver, deadline=deadline)

        jobs += [asyncio.ensure_future(spf_mail_from()), asyncio.ensure_future(spf_helo())]

    async def fetch(name: str, into: dict[str, Answer]) -> None:
        into[name] = await resolver.lookup(name, "TXT", deadline)

    for request_key in key_requests(fields):
        jobs.append(asyncio.ensure_future(fetch(request_key.name, evidence.keys)))
    if evidence.from_count == 1 and len(evidence.from_domains) == 1 and \
            valid_domain(evidence.from_domains[0]):
        for name in dmarc.record_names(evidence.from_domains[0]):
            jobs.append(asyncio.ensure_future(fetch(name, evidence.dmarc)))
    if jobs:
        await asyncio.gather(*jobs)
    if request.bulk:
        evidence.token = check_token(fields, verify_token)
    evidence.lookups_left_unanswered = sum(
        1 for a in (*evidence.keys.values(), *evidence.dmarc.values()) if a.status == ERROR)
    evidence.seconds = time.monotonic() - started
    return evidence


def one_click_uris(fields: list[HeaderField]) -> list[str]:
    """The https URIs of the List-Unsubscribe header (RFC 2369: `<uri>, <uri>`)."""
    values = [f.value for f in fields if f.name.lower() == "list-unsubscribe"]
    out = []
    for value in values[:1]:
        for part in value.split(","):
            part = part.strip()
            if part.startswith("<") and part.endswith(">"):
                uri = part[1:-1].strip()
                if uri.lower().startswith("https://"):
                    out.append(uri)
    return out


def check_token(fields: list[HeaderField], verify: TokenVerifier | None) -> TokenCheck:
    uris = one_click_uris(fields)
    if not uris:
        return TokenCheck("absent")
    if verify is None or not getattr(verify, "has_keys", True):
        return TokenCheck("unchecked")
    for uri in uris:
        token = token_from_url(uri)
        if token is None:
            continue
        claims = verify(token)
        if claims is not None:
            return TokenCheck("valid", claims[0], claims[1])
    return TokenCheck("invalid")
