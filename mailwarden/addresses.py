"""Normalisation of addresses and scopes, so that one person is one key.

Addresses: surrounding whitespace is dropped; the domain is lower-cased and converted to
IDNA A-labels (``bücher.example`` → ``xn--bcher-kva.example``), a trailing dot removed. The
local part is lower-cased as well: RFC 5321 lets a server treat local parts as
case-sensitive, but practically no mailbox provider does, and for a suppression list the
safe error is to suppress too much, never too little. Nothing else is rewritten (no removal
of ``+tags`` or Gmail dots: those can be distinct mailboxes elsewhere).

Scopes: ``*`` is the global scope; any other scope is a list/topic name, lower-cased, of
1-128 characters from ``a-z 0-9 . _ - : / + @``.
"""

from __future__ import annotations

import re
import unicodedata

GLOBAL_SCOPE = "*"
_SCOPE_RE = re.compile(r"^[a-z0-9][a-z0-9._\-:/+@]{0,127}$")
# Control characters, whitespace and the characters that cannot appear unquoted in a
# mailbox; quoted local parts with these are not accepted (nobody sends bulk mail to them).
_BAD_LOCAL = re.compile(r"[\s\x00-\x1f\x7f<>()\[\],;:\\\"]")
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class AddressInvalid(ValueError):
    """An address or scope that cannot be normalised; the message says why."""


def normalize_address(address: str) -> str:
    """Return the canonical form of ``address`` or raise AddressInvalid."""
    if not isinstance(address, str):
        raise AddressInvalid("address must be a string")
    text = unicodedata.normalize("NFC", address.strip())
    if not text:
        raise AddressInvalid("address is empty")
    if "@" not in text:
        raise AddressInvalid(f"address {address!r} has no '@'")
    local, domain = text.rsplit("@", 1)
    if not local:
        raise AddressInvalid(f"address {address!r} has an empty local part")
    if _BAD_LOCAL.search(local) or "@" in local:
        raise AddressInvalid(f"address {address!r} has characters not allowed in a local part")
    if len(local.encode()) > 64:
        raise AddressInvalid(f"address {address!r}: local part longer than 64 octets")
    domain = domain.rstrip(".").lower()
    if not domain:
        raise AddressInvalid(f"address {address!r} has an empty domain")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise AddressInvalid(f"address {address!r}: domain is not a valid IDNA name ({exc})") \
            from None
    ascii_domain = ascii_domain.lower()
    labels = ascii_domain.split(".")
    if len(ascii_domain) > 253 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise AddressInvalid(f"address {address!r} has an invalid domain")
    result = f"{local.lower()}@{ascii_domain}"
    if len(result.encode()) > 254:
        raise AddressInvalid(f"address {address!r} is longer than 254 octets")
    return result


def normalize_scope(scope: str, *, allow_empty: bool = False) -> str:
    """Return the canonical scope. ``""`` is accepted only with ``allow_empty`` (for checks
    of mail that belongs to no list)."""
    if not isinstance(scope, str):
        raise AddressInvalid("scope must be a string")
    text = scope.strip().lower()
    if not text:
        if allow_empty:
            return ""
        raise AddressInvalid("scope is required: a list name, or '*' for all mail")
    if text == GLOBAL_SCOPE:
        return text
    if not _SCOPE_RE.match(text):
        raise AddressInvalid(
            f"scope {scope!r} is invalid: use '*' or 1-128 characters from a-z 0-9 . _ - : / + @ "
            "starting with a letter or digit")
    return text
