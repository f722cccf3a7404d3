"""Phase 2: verification and judgement with what phase 1 fetched — DKIM and ARC
signatures, DMARC, the bulk gate — into rule names, the authenticated identities the
allowlist may match, and the Authentication-Results header. CPU only, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import authres
import authres.arc
import authres.dmarc

from filter_server.auth import dmarc
from filter_server.auth.dkim import SignatureResult, verify_arc, verify_dkim
from filter_server.auth.gather import Evidence
from filter_server.auth.headers import HeaderField
from mailwarden.unsubscribe_headers import ONE_CLICK_VALUE


@dataclass(frozen=True)
class AuthSettings:
    """The `authentication` section of a policy, read once per compiled policy."""

    enabled: bool = False
    authserv_id: str = "mailwarden"
    servers: tuple[str, ...] = ()
    timeout_seconds: float = 1.0
    budget_seconds: float = 2.0
    cache_entries: int = 100_000
    trusted_sealers: frozenset[str] = frozenset()
    bulk_gate: bool = False

    @classmethod
    def from_policy(cls, section: dict[str, Any]) -> "AuthSettings":
        dns = section["dns"]
        return cls(enabled=bool(section["enabled"]), authserv_id=section["authservId"],
                   servers=tuple(dns["servers"]), timeout_seconds=float(dns["timeoutSeconds"]),
                   budget_seconds=float(dns["budgetSeconds"]),
                   cache_entries=int(dns["cacheEntries"]),
                   trusted_sealers=frozenset(d.lower().rstrip(".")
                                             for d in section["arc"]["trustedSealers"]),
                   bulk_gate=bool(section["bulkGate"]["enabled"]))


@dataclass(frozen=True)
class AuthOutcome:
    rules: tuple[tuple[str, str], ...]     # (built-in rule name, detail), in order
    header: str                            # Authentication-Results value (no field name)
    senders: frozenset[str] = frozenset()  # authenticated addresses (lower-case)
    domains: frozenset[str] = frozenset()  # authenticated domains (lower-case)
    temperrors: tuple[str, ...] = ()       # methods that could not be completed


@dataclass
class _Builder:
    rules: list[tuple[str, str]] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    def fire(self, name: str, detail: str = "") -> None:
        self.rules.append((name, detail))


def evaluate(raw: bytes, evidence: Evidence, settings: AuthSettings, *,
             body_text: str = "", uris: tuple[str, ...] | list[str] = ()) -> AuthOutcome:
    out = _Builder()
    senders: set[str] = set()
    domains: set[str] = set()
    temperrors: list[str] = []

    # --- SPF ---------------------------------------------------------------------------
    spf = evidence.spf
    if spf is not None:
        out.fire(f"SPF_{spf.result.upper()}", f"{spf.domain}: {spf.reason}".strip(": "))
        out.results.append(authres.SPFAuthenticationResult(
            result=spf.result, result_comment=_comment(spf.reason),
            smtp_mailfrom=_safe(evidence.mail_from) or _safe(spf.domain) or None))
        if spf.result == "pass" and spf.domain:
            domains.add(spf.domain)
            if evidence.mail_from.rpartition("@")[2] == spf.domain:
                senders.add(evidence.mail_from)
        if spf.result == "temperror":
            temperrors.append("spf")
    helo = evidence.helo
    if helo is not None:
        out.fire(f"SPF_HELO_{helo.result.upper()}", f"{helo.domain}: {helo.reason}")
        out.results.append(authres.SPFAuthenticationResult(
            result=helo.result, result_comment=_comment(helo.reason),
            smtp_helo=_safe(helo.domain) or None))

    # --- DKIM --------------------------------------------------------------------------
    signatures = verify_dkim(raw, evidence.fields, evidence.keys)
    from_domain = evidence.from_domains[0] if len(evidence.from_domains) == 1 and \
        evidence.from_count == 1 else ""
    passed = [s for s in signatures if s.result == "pass"]
    if not signatures:
        out.fire("DKIM_NONE")
        out.results.append(authres.DKIMAuthenticationResult(result="none"))
    for s in signatures:
        out.results.append(authres.DKIMAuthenticationResult(
            result=s.result, result_comment=_comment(s.reason),
            header_d=_safe(s.domain) or None, header_s=_safe(s.selector) or None))
    if passed:
        out.fire("DKIM_VALID", ", ".join(sorted({s.domain for s in passed})))
        domains.update(s.domain for s in passed)
        if from_domain and any(from_domain == s.domain or from_domain.endswith("." + s.domain)
                               for s in passed):
            out.fire("DKIM_VALID_AU", from_domain)
    elif any(s.result == "temperror" for s in signatures):
        out.fire("DKIM_TEMPERROR")
        temperrors.append("dkim")
    elif signatures:
        out.fire("DKIM_INVALID", "; ".join(f"{s.domain or '?'}: {s.reason}"
                                           for s in signatures))

    # --- ARC ---------------------------------------------------------------------------
    arc = verify_arc(raw, evidence.fields, evidence.keys)
    if arc.result == "pass":
        out.fire("ARC_VALID", f"sealed by {arc.sealer}, {arc.instances} set(s)")
    elif arc.result == "fail":
        out.fire("ARC_INVALID", arc.reason)
    elif arc.result == "temperror":
        out.fire("ARC_TEMPERROR", arc.reason)
        temperrors.append("arc")
    if arc.result != "none":
        out.results.append(authres.arc.ARCAuthenticationResult(
            result=arc.result, result_comment=_comment(
                f"i={arc.instances} d={arc.sealer}" if arc.sealer else arc.reason)))

    # --- DMARC -------------------------------------------------------------------------
    _dmarc(out, evidence, settings, from_domain, signatures, arc, raw, senders, domains,
           temperrors)

    # --- the bulk gate -----------------------------------------------------------------
    if evidence.bulk and settings.bulk_gate:
        _bulk_gate(out, evidence, from_domain, signatures, body_text, uris,
                   evidence.recipients, evidence.list_scope)

    header = _header(settings.authserv_id, out.results)
    return AuthOutcome(tuple(out.rules), header, frozenset(senders), frozenset(domains),
                       tuple(temperrors))


def _dmarc(out: _Builder, evidence: Evidence, settings: AuthSettings, from_domain: str,
           signatures: list[SignatureResult], arc: Any, raw: bytes, senders: set[str],
           domains: set[str], temperrors: list[str]) -> None:
    if evidence.from_count != 1 or len(evidence.from_domains) != 1:
        if evidence.from_count or evidence.from_domains:
            out.fire("DMARC_PERMERROR", "not exactly one From address")
            out.results.append(authres.dmarc.DMARCAuthenticationResult(
                result="permerror", result_comment="not exactly one From address"))
        return
    record, found_at, error = dmarc.find_record(from_domain, evidence.dmarc)
    if error == "temperror":
        out.fire("DMARC_TEMPERROR", f"no answer for {found_at}")
        temperrors.append("dmarc")
        out.results.append(authres.dmarc.DMARCAuthenticationResult(
            result="temperror", header_from=_safe(from_domain) or None))
        return
    if error == "permerror" or record is None:
        name = "DMARC_PERMERROR" if error else "DMARC_MISSING"
        out.fire(name, f"{found_at}: unusable record" if error else from_domain)
        out.results.append(authres.dmarc.DMARCAuthenticationResult(
            result="permerror" if error else "none", header_from=_safe(from_domain) or None))
        return
    spf = evidence.spf
    temporary = (spf is not None and spf.result == "temperror") or \
        any(s.result == "temperror" for s in signatures)
    result = dmarc.evaluate(
        from_domain, record, found_at,
        spf_result=spf.result if spf else "none", spf_domain=evidence.spf_domain,
        dkim_passes=[s.domain for s in signatures if s.result == "pass"],
        temporary_failure=temporary, sample_key=_sample_key(evidence.fields, raw))
    comment = f"p={record.policy} sp={record.subdomain_policy}"
    if result.result == "pass":
        out.fire("DMARC_PASS", f"{from_domain} ({result.reason})")
        domains.add(from_domain)
        for f in evidence.fields:
            if f.name.lower() == "from":
                address = _address_of(f.value)
                if address.endswith("@" + from_domain):
                    senders.add(address)
                break
    elif result.result == "temperror":
        out.fire("DMARC_TEMPERROR", result.reason)
        temperrors.append("dmarc")
    elif arc.result == "pass" and arc.sealer and \
            dmarc.organizational_domain(arc.sealer) in {
                dmarc.organizational_domain(d) for d in settings.trusted_sealers} and \
            result.policy in ("reject", "quarantine"):
        out.fire("DMARC_ARC_OVERRIDE", f"{from_domain} p={result.policy}; sealed by "
                 f"{arc.sealer}")
        comment += f" override=arc:{arc.sealer}"
    elif result.policy == "reject":
        out.fire("DMARC_REJECT", f"{from_domain} p=reject")
    elif result.policy == "quarantine":
        out.fire("DMARC_QUARANTINE", f"{from_domain} p=quarantine")
    else:
        out.fire("DMARC_FAIL_NONE", f"{from_domain} p={result.published}"
                 + (" (pct sampling)" if result.published != "none" else ""))
    out.results.append(authres.dmarc.DMARCAuthenticationResult(
        result=result.result, result_comment=_comment(comment),
        header_from=_safe(from_domain) or None))


_UNSUBSCRIBE_WORDS = re.compile(
    r"(?i)unsubscribe|opt[- ]?out|abbestellen|abmelden|d[ée]sinscri|d[ée]sabonner|"
    r"darse de baja|cancelar (la )?suscripci|disiscriviti|afmelden|uitschrijven")


def _bulk_gate(out: _Builder, evidence: Evidence, from_domain: str,
               signatures: list[SignatureResult], body_text: str,
               uris: tuple[str, ...] | list[str], recipients: tuple[str, ...],
               list_scope: str) -> None:
    before = len(out.rules)
    fields = evidence.fields
    names = {f.name.lower() for f in fields}
    unsubscribe = [f.value for f in fields if f.name.lower() == "list-unsubscribe"]
    post = [f.value for f in fields if f.name.lower() == "list-unsubscribe-post"]
    token = evidence.token
    if not unsubscribe:
        out.fire("BULK_NO_LIST_UNSUBSCRIBE")
    elif token is not None and token.status == "absent":
        out.fire("BULK_UNSUBSCRIBE_NOT_HTTPS", unsubscribe[0][:200])
    if len(post) != 1 or post[0].strip() != ONE_CLICK_VALUE:
        out.fire("BULK_NO_ONECLICK", post[0][:200] if post else "no List-Unsubscribe-Post")
    if token is not None:
        if token.status == "invalid":
            out.fire("BULK_ONECLICK_TOKEN_INVALID")
        elif token.status == "unchecked":
            out.fire("BULK_ONECLICK_TOKEN_UNCHECKED")
        elif token.status == "valid":
            wanted = {_normalized(r) for r in recipients}
            if wanted and _normalized(token.address) not in wanted:
                out.fire("BULK_ONECLICK_WRONG_RECIPIENT")
            if list_scope and token.scope != list_scope.strip().lower() and \
                    token.scope != list_scope:
                out.fire("BULK_ONECLICK_WRONG_LIST", f"token for {token.scope!r}")
    verified = [s for s in signatures if s.result == "pass"]
    aligned = [s for s in verified if from_domain and dmarc.aligned(s.domain, from_domain, "r")]
    if not verified:
        if any(s.result == "temperror" for s in signatures):
            out.fire("BULK_DKIM_TEMPERROR")
        else:
            out.fire("BULK_DKIM_MISSING")
    elif not aligned:
        out.fire("BULK_DKIM_NOT_ALIGNED", ", ".join(s.domain for s in verified))
    else:
        if not any("list-unsubscribe" in s.signed_headers for s in aligned):
            out.fire("BULK_DKIM_MISSES_LIST_UNSUBSCRIBE")
        if not any("list-unsubscribe-post" in s.signed_headers for s in aligned):
            out.fire("BULK_DKIM_MISSES_LIST_UNSUBSCRIBE_POST")
    if "list-id" not in names:
        out.fire("BULK_NO_LIST_ID")
    if not (_UNSUBSCRIBE_WORDS.search(body_text[:1_000_000]) or
            any(_UNSUBSCRIBE_WORDS.search(u[:2048]) for u in uris)):
        out.fire("BULK_NO_VISIBLE_UNSUBSCRIBE")
    if len(out.rules) == before or all(n in ("BULK_ONECLICK_TOKEN_UNCHECKED",)
                                       for n, _ in out.rules[before:]):
        out.fire("BULK_COMPLIANT")


def _normalized(address: str) -> str:
    from mailwarden.addresses import normalize_address
    try:
        return normalize_address(address)
    except ValueError:
        return address.strip().strip("<>").lower()


def _address_of(value: str) -> str:
    import email.utils
    try:
        return email.utils.parseaddr(value[:2048])[1].lower()
    except (RecursionError, ValueError, IndexError):
        return ""


def _sample_key(fields: list[HeaderField], raw: bytes) -> str:
    for f in fields:
        if f.name.lower() == "message-id":
            return f.value
    return str(len(raw))


# --- the header ------------------------------------------------------------------------
_SAFE = re.compile(r"^[A-Za-z0-9._@+=-]{1,253}$")


def _safe(value: str) -> str:
    """A property value safe to put in the header as it is: it came from the message, so
    anything that could break out of the field (CR, LF, ;, quotes) is left out."""
    return value if value and _SAFE.match(value) else ""


def _comment(text: str) -> str | None:
    cleaned = "".join(ch for ch in text if " " <= ch <= "~" and ch not in "()\\")
    return cleaned[:160] or None


def _header(authserv_id: str, results: list[Any]) -> str:
    if not results:
        results = [authres.NoneAuthenticationResult()]
    text = str(authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results))
    return text.split(":", 1)[1].strip() if text.lower().startswith(
        "authentication-results:") else text
