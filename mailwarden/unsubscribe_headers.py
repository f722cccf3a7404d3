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

from urllib.parse import urlsplit

from mailwarden.tokens import KeyRing, mint_token

ONE_CLICK_VALUE = "List-Unsubscribe=One-Click"
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def unsubscribe_url(address: str, scope: str, *, keys: KeyRing, base_url: str) -> str:
    """The one-click URL for (address, scope): ``<base_url>/u/<token>``."""
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
        values.append(f"<{mailto if mailto.startswith('mailto:') else 'mailto:' + mailto}>")
    return {"List-Unsubscribe": ", ".join(values), "List-Unsubscribe-Post": ONE_CLICK_VALUE}
