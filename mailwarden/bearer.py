"""The admin credential on the wire: `authorization: Bearer <credential>` call metadata,
as the admin callers send it and the filter server and the store read it. The comparison
with the expected credential stays with each server (constant time)."""

from __future__ import annotations

from collections.abc import Iterable

HEADER = "authorization"


def bearer_metadata(credential: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `credential` (none for an empty one)."""
    return ((HEADER, f"Bearer {credential}"),) if credential else ()


def bearer_credential(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    """The credential of the first `authorization: Bearer …` entry, or None."""
    for key, value in metadata or ():
        if key == HEADER:
            text = value if isinstance(value, str) else value.decode("latin-1")
            scheme, _, credential = text.partition(" ")
            if scheme.lower() == "bearer":
                return credential.strip().encode()
    return None
