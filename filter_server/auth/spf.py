"""SPF (RFC 7208) `check_host()` over the shared asynchronous resolver.

Our own evaluator rather than pyspf: pyspf resolves synchronously through a process-wide
DNS hook, so it can neither share the asynchronous cache nor stop at a message's deadline.
The RFC's processing limits are enforced: at most 10 DNS-querying terms (include, a, mx,
ptr, exists, redirect) per evaluation, at most 2 void lookups (NXDOMAIN or no records),
at most 10 MX or PTR names followed per term. The `exp=` explanation is not fetched (an
extra lookup nobody reads; the RFC lets the explanation be empty).

Results: pass, fail, softfail, neutral, none, permerror, temperror.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote

from filter_server.auth.resolver import ERROR, NODATA, NXDOMAIN, Answer, Resolver

MAX_DNS_TERMS = 10
MAX_VOID_LOOKUPS = 2
MAX_NAMES_PER_TERM = 10
MAX_RECORD_BYTES = 4096  # longer SPF records are refused (permerror), nothing real is close
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_DNS_TERMS = {"include", "a", "mx", "ptr", "exists"}
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_CIDR_RE = re.compile(r"^(.*?)(?:/(0|[1-9][0-9]{0,2}))?(?://(0|[1-9][0-9]{0,2}))?$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


@dataclass(frozen=True)
class SpfResult:
    result: str
    domain: str            # the identity's domain checked
    reason: str = ""       # the mechanism that matched, or why it is an error
    lookups: int = 0       # DNS-querying terms used


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


class _State:
    def __init__(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, sender: str,
                 helo: str, resolver: Resolver, deadline: float) -> None:
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.resolver = resolver
        self.deadline = deadline
        self.terms = 0
        self.voids = 0

    def count_term(self) -> None:
        self.terms += 1
        if self.terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS lookups")

    async def lookup(self, name: str, rdtype: str, *, void_counts: bool = True) -> Answer:
        answer = await self.resolver.lookup(name, rdtype, self.deadline)
        if answer.status == ERROR:
            raise _TempError(f"DNS {answer.detail or 'error'} for {name} {rdtype}")
        if void_counts and answer.status in (NXDOMAIN, NODATA):
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void lookups")
        return answer


def valid_domain(domain: str) -> bool:
    """A fully qualified name SPF can look up: dotted, labels of 1-63, 253 in all."""
    domain = domain.rstrip(".")
    if not domain or len(domain) > 253 or "." not in domain:
        return False
    return all(_LABEL_RE.match(label) for label in domain.split("."))


async def check_host(ip: str, domain: str, sender: str, *, helo: str, resolver: Resolver,
                     deadline: float) -> SpfResult:
    """The SPF result for `ip` sending as `sender` (MAIL FROM, or postmaster@HELO) whose
    domain is `domain`."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return SpfResult("none", domain, "no valid client IP")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    domain = domain.lower().rstrip(".")
    if not valid_domain(domain):
        return SpfResult("none", domain, "not a domain SPF can check")
    state = _State(address, sender, helo, resolver, deadline)
    try:
        result, reason = await _check(state, domain, depth=0)
    except _TempError as exc:
        return SpfResult("temperror", domain, str(exc), state.terms)
    except _PermError as exc:
        return SpfResult("permerror", domain, str(exc), state.terms)
    return SpfResult(result, domain, reason, state.terms)


async def _record(state: _State, domain: str) -> str | None:
    answer = await state.lookup(domain, "TXT", void_counts=False)
    if answer.status != "ok":
        return None
    records = []
    for raw in answer.records:
        text = raw.decode("ascii", "replace")
        if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 "):
            records.append(text)
    if len(records) > 1:
        raise _PermError(f"{domain} publishes {len(records)} SPF records")
    if records and len(records[0]) > MAX_RECORD_BYTES:
        raise _PermError(f"the SPF record of {domain} is too long")
    return records[0] if records else None


async def _check(state: _State, domain: str, depth: int) -> tuple[str, str]:
    if depth > MAX_DNS_TERMS + 1:  # cannot happen within the term limit; belt and braces
        raise _PermError("include/redirect nested too deeply")
    record = await _record(state, domain)
    if record is None:
        return "none", f"no SPF record at {domain}"
    terms = _parse(record)
    redirect = None
    for kind, qualifier, name, value in terms:
        if kind == "modifier":
            if name == "redirect":
                redirect = value
            continue
        if await _matches(state, domain, name, value, depth):
            return _QUALIFIERS[qualifier], f"{qualifier if qualifier != '+' else ''}{name}" + \
                (f":{value}" if value else "")
    if redirect is not None:
        state.count_term()
        target = _expand(state, redirect, domain)
        result, reason = await _check(state, target, depth + 1)
        if result == "none":
            raise _PermError(f"redirect to {target}, which has no SPF record")
        return result, reason
    return "neutral", "no mechanism matched"


def _parse(record: str) -> list[tuple[str, str, str, str]]:
    """Terms of a record: ("mechanism", qualifier, name, argument) or ("modifier", "",
    name, value). The whole record is checked first: any syntax error is a permerror."""
    out: list[tuple[str, str, str, str]] = []
    seen_modifiers: set[str] = set()
    for term in record.split(" ")[1:]:
        if not term:
            continue
        qualifier, explicit = "+", False
        if term[0] in _QUALIFIERS:
            qualifier, term, explicit = term[0], term[1:], True
        name, sep, value = _split_term(term)
        lname = name.lower()
        if sep == "=":
            if explicit or not _NAME_RE.match(name):
                raise _PermError(f"bad modifier {term!r}")
            if lname in ("redirect", "exp"):
                if lname in seen_modifiers:
                    raise _PermError(f"{lname}= given twice")
                seen_modifiers.add(lname)
                _check_macros(value)
            out.append(("modifier", "", lname, value))
            continue
        if lname not in _MECHANISMS:
            raise _PermError(f"unknown mechanism {name!r}")
        if lname == "all" and sep:
            raise _PermError("'all' takes no argument")
        if lname in ("include", "exists") and not value:
            raise _PermError(f"'{lname}' needs a domain")
        if lname in ("ip4", "ip6"):
            _network(lname, value)  # validate now
        elif value:
            _check_macros(_cidrs(value)[0] if lname in ("a", "mx") else value)
        out.append(("mechanism", qualifier, lname, value))
    return out


def _split_term(term: str) -> tuple[str, str, str]:
    """name, separator (":", "/", "=" or ""), rest — a mechanism's argument keeps its
    leading "/" (a and mx take a bare CIDR: `a/24`)."""
    for i, ch in enumerate(term):
        if ch == "=":
            return term[:i], "=", term[i + 1:]
        if ch == ":":
            return term[:i], ":", term[i + 1:]
        if ch == "/":
            return term[:i], "/", term[i:]
    return term, "", ""


def _network(kind: str, value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        address, _, length = value.partition("/")
        if length and (not length.isdigit() or (len(length) > 1 and length[0] == "0")):
            raise ValueError(length)
        if kind == "ip4":
            ipaddress.IPv4Address(address)
            return ipaddress.IPv4Network(value if length else address + "/32", strict=False)
        ipaddress.IPv6Address(address)
        return ipaddress.IPv6Network(value if length else address + "/128", strict=False)
    except ValueError:
        raise _PermError(f"bad {kind} network {value!r}") from None


def _cidrs(value: str) -> tuple[str, int, int]:
    """domain-spec, IPv4 prefix, IPv6 prefix of an `a`/`mx` argument."""
    match = _CIDR_RE.match(value)
    assert match is not None  # the pattern matches any string
    spec, v4, v6 = match.group(1), match.group(2), match.group(3)
    v4n, v6n = int(v4) if v4 else 32, int(v6) if v6 else 128
    if v4n > 32 or v6n > 128:
        raise _PermError(f"bad prefix length in {value!r}")
    return spec, v4n, v6n


async def _matches(state: _State, domain: str, name: str, value: str, depth: int) -> bool:
    ip = state.ip
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        network = _network(name, value)
        return ip.version == network.version and ip in network
    state.count_term()
    if name == "include":
        target = _expand(state, value, domain)
        result, _ = await _check(state, target, depth + 1)
        if result == "pass":
            return True
        if result in ("fail", "softfail", "neutral"):
            return False
        if result == "none":
            raise _PermError(f"include of {target}, which has no SPF record")
        raise _PermError(result)  # unreachable: errors propagate as exceptions
    if name == "exists":
        answer = await state.lookup(_expand(state, value, domain), "A")
        return answer.status == "ok"
    if name == "a":
        spec, v4, v6 = _cidrs(value)
        target = _expand(state, spec, domain) if spec else domain
        return await _host_matches(state, target, v4, v6)
    if name == "mx":
        spec, v4, v6 = _cidrs(value)
        target = _expand(state, spec, domain) if spec else domain
        answer = await state.lookup(target, "MX")
        hosts = [host for _pref, host in answer.records] if answer.status == "ok" else []
        if len(hosts) > MAX_NAMES_PER_TERM:
            raise _PermError(f"{target} has more than {MAX_NAMES_PER_TERM} MX records")
        for host in hosts:
            if await _host_matches(state, host, v4, v6, void_counts=False):
                return True
        return False
    if name == "ptr":
        target = _expand(state, value, domain) if value else domain
        return target.lower() in await _validated_names(state, target)
    raise _PermError(f"unknown mechanism {name!r}")


async def _host_matches(state: _State, host: str, v4: int, v6: int, *,
                        void_counts: bool = True) -> bool:
    ip = state.ip
    rdtype = "A" if ip.version == 4 else "AAAA"
    answer = await state.lookup(host, rdtype, void_counts=void_counts)
    if answer.status != "ok":
        return False
    prefix = v4 if ip.version == 4 else v6
    for address in answer.records:
        network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        if ip in network:
            return True
    return False


async def _validated_names(state: _State, target: str) -> set[str]:
    """Names of the client IP (PTR) whose forward lookup gives the IP back, limited to
    those equal to or under `target` (RFC 7208 5.5: only those need validating)."""
    answer = await state.lookup(state.ip.reverse_pointer, "PTR")
    out: set[str] = set()
    if answer.status != "ok":
        return out
    target = target.lower().rstrip(".")
    for host in answer.records[:MAX_NAMES_PER_TERM]:
        if host != target and not host.endswith("." + target):
            continue
        try:
            if await _host_matches(state, host, 32, 128, void_counts=False):
                out.add(target)
        except _TempError:
            continue  # a PTR name that cannot be checked is skipped (RFC 7208 5.5)
    return out


# --- macros (RFC 7208 section 7) --------------------------------------------------------
_MACRO_LETTERS = set("slodiphv")
_DELIMITERS = set(".-+,/_=")
_MACRO = re.compile(r"%(?:\{([A-Za-z])([0-9]*)(r?)([.\-+,/_=]*)\}|(.))")


def _check_macros(text: str) -> None:
    pos = 0
    while True:
        i = text.find("%", pos)
        if i < 0:
            return
        match = _MACRO.match(text, i)
        if match is None:
            raise _PermError(f"bad macro in {text!r}")
        if match.group(5) is not None:
            if match.group(5) not in "%_-":
                raise _PermError(f"bad macro in {text!r}")
        elif match.group(1).lower() not in _MACRO_LETTERS:
            raise _PermError(f"macro %{{{match.group(1)}}} is only allowed in exp=")
        pos = match.end()


def _expand(state: _State, spec: str, domain: str) -> str:
    if "%" not in spec:
        return _trim(spec)
    out: list[str] = []
    pos = 0
    while True:
        i = spec.find("%", pos)
        if i < 0:
            out.append(spec[pos:])
            break
        out.append(spec[pos:i])
        match = _MACRO.match(spec, i)
        if match is None:
            raise _PermError(f"bad macro in {spec!r}")
        if match.group(5) is not None:
            out.append({"%": "%", "_": " ", "-": "%20"}.get(match.group(5), ""))
        else:
            out.append(_macro(state, domain, *match.group(1, 2, 3, 4)))
        pos = match.end()
    return _trim("".join(out))


def _macro(state: _State, domain: str, letter: str, digits: str, reverse: str,
           delimiters: str) -> str:
    sender = state.sender
    local, _, sender_domain = sender.rpartition("@")
    key = letter.lower()
    if key == "s":
        value = sender
    elif key == "l":
        value = local or "postmaster"
    elif key == "o":
        value = sender_domain
    elif key == "d":
        value = domain
    elif key == "i":
        value = str(state.ip) if state.ip.version == 4 else \
            ".".join(state.ip.exploded.replace(":", ""))
    elif key == "p":
        value = "unknown"  # RFC 7208 7.3: SHOULD NOT be used; we do not spend a lookup
    elif key == "v":
        value = "in-addr" if state.ip.version == 4 else "ip6"
    elif key == "h":
        value = state.helo
    else:
        raise _PermError(f"macro %{{{letter}}} is only allowed in exp=")
    parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
    if reverse:
        parts.reverse()
    if digits:
        count = int(digits)
        if count == 0:
            raise _PermError("a macro keeps at least one part")
        parts = parts[-count:]
    value = ".".join(parts)
    if letter.isupper():
        value = quote(value, safe="")
    return value


def _trim(domain: str) -> str:
    """RFC 7208 7.3: over 253 characters, labels are dropped from the left."""
    domain = domain.rstrip(".")
    while len(domain) > 253 and "." in domain:
        domain = domain.split(".", 1)[1]
    return domain.lower()
