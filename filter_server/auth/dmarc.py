"""DMARC (RFC 7489): the record, the organizational domain, alignment and the policy.

The organizational domain comes from the Public Suffix List as packaged by
`publicsuffixlist` (a maintained, offline copy updated with every release; nothing is
downloaded at run time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from filter_server.auth.resolver import ERROR, Answer


@dataclass(frozen=True)
class DmarcRecord:
    policy: str                 # none, quarantine, reject
    subdomain_policy: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


@dataclass(frozen=True)
class DmarcResult:
    result: str                 # pass, fail, none, permerror, temperror
    domain: str                 # the From domain
    policy: str = ""            # policy applied on fail (after pct sampling): none, ...
    published: str = ""         # p= (or sp=) as published
    reason: str = ""


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    domain = domain.lower().rstrip(".")
    found = _psl().privatesuffix(domain)
    return found or domain


def aligned(a: str, b: str, mode: str) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def record_names(from_domain: str) -> list[str]:
    """Where the record may be: the From domain, then its organizational domain."""
    org = organizational_domain(from_domain)
    names = [f"_dmarc.{from_domain}"]
    if org != from_domain:
        names.append(f"_dmarc.{org}")
    return names


def parse_record(text: str) -> DmarcRecord | None:
    """The record, or None when it is not a usable DMARC record."""
    parts = [p.strip() for p in text.split(";")]
    if not parts or parts[0].replace(" ", "") != "v=DMARC1":
        return None
    values: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            values.setdefault(key.strip().lower(), value.strip().lower())
    policy = values.get("p")
    if policy not in ("none", "quarantine", "reject"):
        # RFC 7489 6.6.3: a record with rua= but a bad p= is treated as p=none
        if "rua" in values:
            policy = "none"
        else:
            return None
    subdomain = values.get("sp", policy)
    if subdomain not in ("none", "quarantine", "reject"):
        subdomain = policy
    try:
        pct = min(100, max(0, int(values.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcRecord(policy, subdomain, "s" if values.get("adkim") == "s" else "r",
                       "s" if values.get("aspf") == "s" else "r", pct)


def find_record(from_domain: str, answers: dict[str, Answer]) -> tuple[DmarcRecord | None,
                                                                      str, str]:
    """(record, where it was found, error): error is "temperror" or "permerror" or ""."""
    for name in record_names(from_domain):
        answer = answers.get(name)
        if answer is None:
            continue
        if answer.status == ERROR:
            return None, name, "temperror"
        if answer.status != "ok":
            continue
        texts = [r.decode("ascii", "replace") for r in answer.records
                 if r[:8].replace(b" ", b"").upper().startswith(b"V=DMARC1")]
        if len(texts) > 1:
            return None, name, "permerror"  # several records: none applies (RFC 7489 6.6.3)
        if texts:
            record = parse_record(texts[0])
            if record is None:
                return None, name, "permerror"
            return record, name, ""
    return None, "", ""


def evaluate(from_domain: str, record: DmarcRecord, found_at: str, *,
             spf_result: str, spf_domain: str, dkim_passes: list[str],
             temporary_failure: bool, sample_key: str) -> DmarcResult:
    """Pass when SPF passed for an aligned domain or an aligned DKIM signature verified;
    otherwise fail under the published policy (sp= for a subdomain when the record is the
    organizational domain's), or temperror when a check that could have passed could not
    be completed (a DNS outage must not be answered as a failure)."""
    org_record = found_at != f"_dmarc.{from_domain}"
    published = record.subdomain_policy if org_record else record.policy
    if spf_result == "pass" and spf_domain and aligned(spf_domain, from_domain, record.aspf):
        return DmarcResult("pass", from_domain, published=published, reason="SPF aligned")
    for domain in dkim_passes:
        if aligned(domain, from_domain, record.adkim):
            return DmarcResult("pass", from_domain, published=published,
                               reason="DKIM aligned")
    if temporary_failure:
        return DmarcResult("temperror", from_domain, published=published,
                           reason="SPF or DKIM could not be checked")
    policy = published
    if record.pct < 100 and _sample(sample_key) >= record.pct:
        # Not sampled: the next weaker policy applies (RFC 7489 6.6.4).
        policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, policy)
    return DmarcResult("fail", from_domain, policy=policy, published=published,
                       reason="neither SPF nor DKIM aligned")


def _sample(key: str) -> int:
    """0-99, the same for the same message (so a verdict does not change on a retry)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "replace")).digest()[:4],
                          "big") % 100
