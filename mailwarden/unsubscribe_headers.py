"""Sender-side helper: the ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` headers
(RFC 2369 + RFC 8058) for one recipient of one list.

    from mailwarden.unsubscribe_headers import list_unsubscribe_headers
    from mailwarden.tokens import load_keyring
    keys = load_keyring(key_dir="/etc/mailwarden/signing-keys")
    headers = list_unsubscribe_headers("ann@example.com", "newsletter", keys=keys,
                                       base_url="https://unsubscribe.example.com")
    # {"List-Unsubscribe": "<https://unsubscribe.example.com/u/AZ...>",
    #  "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}

RFC 8058 requires an HTTPS URI (and DKIM coverage of both headers, which is the signer's
job); plain http is accepted only for loopback hosts, for local mode.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from mailwarden.tokens import KeyRing, mint_token

ONE_CLICK_VALUE = "List-Unsubscribe=One-Click"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
# The characters of an RFC 3986 URI (unreserved, reserved, and '%' of percent-encoding).
# Everything the header gets is checked against this: CR/LF would start a header of the
# caller's choosing, '<' and '>' would close the <...> and add URIs of theirs.
_URI = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")


def _uri(value: str, what: str) -> str:
    if not isinstance(value, str) or not _URI.fullmatch(value):
        raise ValueError(f"{what} {value!r:.80} is not a plain URI: only RFC 3986 characters "
                         "are allowed (no spaces, controls, quotes or angle brackets; "
                         "percent-encode anything else)")
    return value


def unsubscribe_url(address: str, scope: str, *, keys: KeyRing, base_url: str) -> str:
    """The one-click URL for (address, scope): ``<base_url>/u/<token>``."""
    _uri(base_url, "base URL")
    parts = urlsplit(base_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"base URL {base_url!r} must be an absolute https:// URL")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
        raise ValueError(f"base URL {base_url!r}: RFC 8058 requires https (plain http is "
                         "accepted only for loopback, in local mode)")
    if parts.query or parts.fragment:
        raise ValueError(f"base URL {base_url!r} must not have a query or fragment")
    return f"{base_url.rstrip('/')}/u/{mint_token(keys, address, scope)}"


def token_from_url(url: str) -> str | None:
    """The token of a one-click URL made by `unsubscribe_url` (``<base>/u/<token>``), or
    None when `url` is not one."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    _base, sep, token = parts.path.rpartition("/u/")
    if not sep or not token or "/" in token or parts.query or parts.fragment:
        return None
    return token


def list_unsubscribe_headers(address: str, scope: str, *, keys: KeyRing, base_url: str,
                             mailto: str | None = None) -> dict[str, str]:
    """Both headers, ready to add to a message. ``mailto`` (optional) adds an RFC 2369
    mailto: alternative for clients that do not do one-click."""
    values = [f"<{unsubscribe_url(address, scope, keys=keys, base_url=base_url)}>"]
    if mailto:
        values.append(f"<{mailto_uri(mailto)}>")
    return {"List-Unsubscribe": ", ".join(values), "List-Unsubscribe-Post": ONE_CLICK_VALUE}


def mailto_uri(mailto: str) -> str:
    """``mailto:`` URI (RFC 6068) for an address or a mailto URI, refusing anything that is
    not one (header injection)."""
    uri = mailto if mailto.startswith("mailto:") else "mailto:" + mailto
    _uri(uri, "mailto")
    to = uri[len("mailto:"):].split("?", 1)[0]
    if "@" not in to or to.startswith("@") or to.endswith("@") or "//" in uri:
        raise ValueError(f"mailto {mailto!r:.80} must be an address or a mailto: URI, "
                         "e.g. unsubscribe@example.com?subject=unsubscribe")
    return uri
