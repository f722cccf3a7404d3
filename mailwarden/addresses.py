"""Normalisation of addresses and scopes, so that one recipient is one key.

This is the one function the store (when it records, checks, imports and signs) and the
filter pods (when they look recipients up in their suppression cache) share: if the two
normalised differently, a suppression would silently fail to apply.

What counts as "the same recipient":

- **Spellings of the same SMTP path.** The RCPT TO forward-path ``<reader@example.com>``
  (with an obsolete source route ``<@relay:reader@example.com>`` ignored, as RFC 5321 §4.1.2
  says) and a quoted local part whose content needs no quoting (``"reader"@example.com``)
  are the same mailbox as ``reader@example.com``. A local part that does need quoting is
  kept quoted, in one canonical form (only ``"`` and ``\\`` escaped).
- **Compatibility forms**: the whole address is NFKC-normalised first, so full-width
  ``ｒｅａｄｅｒ＠ｅｘａｍｐｌｅ．ｃｏｍ`` is ``reader@example.com``.
- **The domain** is case-insensitive and has one A-label form: it is mapped and checked with
  UTS #46 (non-transitional) and IDNA2008 — the ``idna`` package, never Python's IDNA 2003
  codec, which maps ``straße.de`` to ``strasse.de``, a different domain owned by someone
  else. ``Bücher.example`` and ``xn--bcher-kva.example`` are one key; ``straße.de``
  (``xn--strae-oqa.de``) and ``strasse.de`` are two. Address literals (``[192.0.2.1]``,
  ``[IPv6:2001:db8::1]``) are kept in their canonical text form.
- **The local part is compared caselessly** (Unicode full case folding after NFKC, so
  ``STRASSE`` and ``straße`` fold alike). RFC 5321 lets a server treat local parts as
  case-sensitive, but practically no mailbox provider does, and for a suppression list the
  safe error is to suppress too much, never too little. Nothing else is rewritten (no
  removal of ``+tags`` or Gmail dots: those are distinct mailboxes elsewhere).

Anything else — display names, a missing or second ``@``, an invalid domain — raises
``AddressInvalid`` with the reason; callers report such recipients, they never drop them.

Scopes: ``*`` is the global scope; any other scope is a list/topic name, NFKC-normalised and
lower-cased, of 1-128 characters from ``a-z 0-9 . _ - : / + @``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata

import idna

GLOBAL_SCOPE = "*"
MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_OCTETS = 253
MAX_ADDRESS_OCTETS = 254
# Longer input is not an address whatever it contains; refused before any Unicode work.
MAX_INPUT_CHARS = 1024

_SCOPE_RE = re.compile(r"^[a-z0-9][a-z0-9._\-:/+@]{0,127}$")
# What may not appear in an unquoted local part: whitespace, controls, and the specials of
# RFC 5322 (a local part with any of these is written quoted).
_NEEDS_QUOTES = re.compile(r"[\s\x00-\x1f\x7f<>()\[\],;:\\\"@]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # TAB aside: it is quotable whitespace
_LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class AddressInvalid(ValueError):
    """An address or scope that cannot be normalised; the message says why."""


def _shown(text: str) -> str:
    """The input as error messages quote it: never more than 64 characters of it."""
    return repr(text if len(text) <= 64 else text[:61] + "...")


# The common case, already canonical once lower-cased: ASCII, an unquoted local part of
# characters that need no quoting, and LDH domain labels (checked for "xn--" apart). For
# ASCII, NFKC is the identity and case folding is lower(), so the full path below returns
# exactly this; tests compare the two on generated input. It saves most of the per-address
# cost of a bulk import and of every Classify recipient.
_CANONICAL_ASCII = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}"
                              r"@(?:(?!-)[a-z0-9-]{1,63}(?<!-)\.)*(?!-)[a-z0-9-]{1,63}(?<!-)")


def normalize_address(address: str) -> str:
    """Return the canonical form of ``address`` or raise AddressInvalid."""
    if isinstance(address, str) and address.isascii():
        lowered = address.lower()
        if len(lowered) <= MAX_ADDRESS_OCTETS and _CANONICAL_ASCII.fullmatch(lowered) \
                and ".xn--" not in "." + lowered[lowered.index("@") + 1:]:
            return lowered
    return _normalize_fully(address)


def _normalize_fully(address: str) -> str:
    if not isinstance(address, str):
        raise AddressInvalid("address must be a string")
    if len(address) > MAX_INPUT_CHARS:
        raise AddressInvalid(f"address of {len(address)} characters is longer than any "
                             f"address can be ({MAX_ADDRESS_OCTETS} octets)")
    text = unicodedata.normalize("NFKC", address).strip()
    if not text:
        raise AddressInvalid("address is empty")
    mailbox = _strip_path(text, address)
    local, domain = _split(mailbox, address)
    result = f"{_canonical_local(local, address)}@{_canonical_domain(domain, address)}"
    if len(result.encode()) > MAX_ADDRESS_OCTETS:
        raise AddressInvalid(f"address {_shown(address)} is longer than "
                             f"{MAX_ADDRESS_OCTETS} octets")
    return result


def _strip_path(text: str, given: str) -> str:
    """``<mailbox>`` or ``<@route,@route:mailbox>`` (an SMTP path) → mailbox."""
    if not text.startswith("<"):
        if text.endswith(">"):
            raise AddressInvalid(f"address {_shown(given)}: a display name or an unbalanced "
                                 "'>' (give the mailbox alone, or <mailbox>)")
        return text
    if not text.endswith(">"):
        raise AddressInvalid(f"address {_shown(given)} has '<' without a closing '>'")
    inner = text[1:-1].strip()
    if not inner:
        raise AddressInvalid("<> is the null path (bounces), not a recipient")
    if inner.startswith("@"):  # source route, e.g. <@relay.example,@b.example:ann@c.example>
        end = inner.find(":")
        route = inner[:end] if end > 0 else ""
        if not route or not all(hop.startswith("@") and len(hop) > 1
                                for hop in route.split(",")):
            raise AddressInvalid(f"address {_shown(given)} has an invalid source route")
        inner = inner[end + 1:]
    if "<" in inner or ">" in inner:
        raise AddressInvalid(f"address {_shown(given)} has nested angle brackets")
    return inner


def _split(mailbox: str, given: str) -> tuple[str, str]:
    """(local part with quotes resolved, domain). The local part is returned unquoted; a
    quoted local part may contain any character but controls."""
    if mailbox.startswith('"'):
        chars: list[str] = []
        i = 1
        while i < len(mailbox):
            c = mailbox[i]
            if c == "\\":
                if i + 1 >= len(mailbox):
                    break
                chars.append(mailbox[i + 1])
                i += 2
                continue
            if c == '"':
                break
            chars.append(c)
            i += 1
        else:
            raise AddressInvalid(f"address {_shown(given)} has an unterminated quoted "
                                 "local part")
        if i >= len(mailbox) or mailbox[i] != '"':
            raise AddressInvalid(f"address {_shown(given)} has an unterminated quoted "
                                 "local part")
        rest = mailbox[i + 1:]
        if not rest.startswith("@"):
            raise AddressInvalid(f"address {_shown(given)}: a quoted local part must be "
                                 "followed directly by '@domain'")
        local = "".join(chars)
        if _CONTROL.search(local):
            raise AddressInvalid(f"address {_shown(given)} has a control character in its "
                                 "local part")
        return local, rest[1:]
    local, at, domain = mailbox.partition("@")
    if not at:
        raise AddressInvalid(f"address {_shown(given)} has no '@'")
    if not local:
        raise AddressInvalid(f"address {_shown(given)} has an empty local part")
    if "@" in domain:
        raise AddressInvalid(f"address {_shown(given)} has more than one '@' (an '@' in the "
                             "local part must be quoted)")
    if _NEEDS_QUOTES.search(local):
        raise AddressInvalid(f"address {_shown(given)} has characters not allowed in an "
                             "unquoted local part (whitespace, controls or one of "
                             "<>()[],;:\\\"@)")
    return local, domain


def _canonical_local(local: str, given: str) -> str:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", local).casefold())
    if not folded:
        raise AddressInvalid(f"address {_shown(given)} has an empty local part")
    if _CONTROL.search(folded):
        raise AddressInvalid(f"address {_shown(given)} has a control character in its "
                             "local part")
    if _NEEDS_QUOTES.search(folded):
        folded = '"' + folded.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if len(folded.encode()) > MAX_LOCAL_OCTETS:
        raise AddressInvalid(f"address {_shown(given)}: local part longer than "
                             f"{MAX_LOCAL_OCTETS} octets")
    return folded


def _canonical_domain(domain: str, given: str) -> str:
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise AddressInvalid(f"address {_shown(given)} has an empty domain")
    if domain.startswith("["):
        return _address_literal(domain, given)
    if domain.isascii():
        lowered = domain.lower()
        labels = lowered.split(".")
        # The common case needs no IDNA processing: UTS #46 maps an LDH name to its
        # lower-case self. Labels with the ACE prefix are IDNs and go through the check.
        if len(lowered) <= MAX_DOMAIN_OCTETS and all(
                _LDH_LABEL.match(label) and not label.startswith("xn--") for label in labels):
            return lowered
    try:
        return _idna_domain(domain)
    except AddressInvalid as exc:
        raise AddressInvalid(f"address {_shown(given)}: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _idna_domain(domain: str) -> str:
    try:
        ascii_domain = idna.encode(domain, uts46=True, transitional=False,
                                   std3_rules=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise AddressInvalid(f"domain is not a valid IDNA2008 name ({exc})") from None
    ascii_domain = ascii_domain.rstrip(".")
    if not ascii_domain or len(ascii_domain) > MAX_DOMAIN_OCTETS or not all(
            _LDH_LABEL.match(label) for label in ascii_domain.split(".")):
        raise AddressInvalid("domain is not a valid host name")
    return ascii_domain


def _address_literal(domain: str, given: str) -> str:
    if not domain.endswith("]"):
        raise AddressInvalid(f"address {_shown(given)} has an unterminated address literal")
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(inner[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(inner)}]"
    except ValueError:
        raise AddressInvalid(f"address {_shown(given)} has an invalid address literal "
                             "(use [IPv4] or [IPv6:address])") from None


def normalize_scope(scope: str, *, allow_empty: bool = False) -> str:
    """Return the canonical scope. ``""`` is accepted only with ``allow_empty`` (for checks
    of mail that belongs to no list)."""
    if not isinstance(scope, str):
        raise AddressInvalid("scope must be a string")
    if len(scope) > MAX_INPUT_CHARS:
        raise AddressInvalid("scope is longer than 128 characters")
    text = unicodedata.normalize("NFKC", scope).strip().lower()
    if not text:
        if allow_empty:
            return ""
        raise AddressInvalid("scope is required: a list name, or '*' for all mail")
    if text == GLOBAL_SCOPE:
        return text
    if not _SCOPE_RE.match(text):
        raise AddressInvalid(
            f"scope {_shown(scope)} is invalid: use '*' or 1-128 characters from "
            "a-z 0-9 . _ - : / + @ starting with a letter or digit")
    return text
