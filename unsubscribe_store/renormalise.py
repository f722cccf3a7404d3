"""Re-keying stored suppressions when address normalisation changes (schema migration 2).

Suppressions are keyed by the normalised address, so a new normalisation must move every row
whose key it changes — or the row stops matching the recipient it was recorded for. Up to
migration 1 the store normalised with ``str.lower()`` for the local part and Python's
IDNA 2003 codec for the domain; from migration 2 on with NFKC + Unicode case folding and
UTS #46 / IDNA2008 (``mailwarden.addresses``). For a stored key ``k`` the new key is
``normalize_address(k)``: case folding after lower-casing is case folding, and an IDNA 2003
A-label decodes to a name UTS #46 maps to itself.

One loss needs more than that. IDNA 2003 mapped the "deviation" characters away — ``ß`` to
``ss``, ``ς`` to ``σ`` — so a suppression recorded for ``leser@straße.de`` was stored as
``leser@strasse.de``, and it suppressed mail to both. IDNA2008 keeps ``straße.de``
(``xn--strae-oqa.de``) apart from ``strasse.de``; which of the two the person used cannot be
recovered. So that no suppression is lost, a legacy row keeps the reach it had: it is also
stored under each name the old mapping folded into it (``ss`` → ``ß``, ``σ`` → ``ς``, at
most ``MAX_VARIANTS`` names per row). New suppressions are exact. (IDNA 2003 also dropped
ZERO WIDTH (NON-)JOINER; IDNA2008 allows them only in a few scripts' contexts, and names
with them are not reconstructed.)
"""

from __future__ import annotations

from dataclasses import dataclass

import idna

from mailwarden.addresses import AddressInvalid, normalize_address
from mailwarden.suppression import Reason
from unsubscribe_store.model import request_fingerprint

MAX_VARIANTS = 16
# The change log's source for the removal of a key that was re-keyed.
RENORMALISE_SOURCE = "schema migration 2: re-keyed"
_DEVIATIONS = (("ss", "ß"), ("σ", "ς"))


@dataclass(frozen=True)
class Rekey:
    old: str               # the key as stored
    keys: tuple[str, ...]  # the keys the suppression must have from now on (first: new key)

    @property
    def moves(self) -> bool:
        """Whether the stored key itself is no longer a key (it must be removed)."""
        return self.old not in self.keys


def rekey(stored: str) -> Rekey | None:
    """What becomes of a stored key; None when nothing changes (or, for a key the new
    normalisation rejects — a domain IDNA2008 disallows — nothing can: it stays as it is)."""
    try:
        new = normalize_address(stored)
    except AddressInvalid:
        return None
    local, _, domain = new.rpartition("@")
    keys = [new] + [f"{local}@{variant}" for variant in legacy_domain_variants(domain)]
    if keys == [stored]:
        return None
    return Rekey(stored, tuple(dict.fromkeys(keys)))


def refingerprint(fingerprint: str, old: str, new: str, scope: str) -> str | None:
    """An idempotency key's fingerprint for its request re-keyed from ``old`` to ``new``
    (the reason is found by trying each: it is part of the fingerprint, not stored)."""
    for reason in Reason:
        if request_fingerprint(old, scope, reason) == fingerprint:
            return request_fingerprint(new, scope, reason)
    return None


def legacy_domain_variants(domain: str) -> list[str]:
    """The other IDNA2008 names (A-labels) that IDNA 2003 folded into ``domain``."""
    if domain.startswith("["):
        return []
    labels = domain.split(".")
    choices: list[list[str]] = []
    for label in labels:
        try:
            text = idna.decode(label) if label.startswith("xn--") else label
        except idna.IDNAError:
            return []
        choices.append(_label_variants(text))
    names: list[str] = [""]
    for options in choices:
        names = [f"{prefix}.{option}" if prefix else option
                 for prefix in names for option in options][:MAX_VARIANTS + 1]
    out: list[str] = []
    for name in names:
        try:
            encoded = idna.encode(name, uts46=True, transitional=False,
                                  std3_rules=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            continue
        if encoded != domain and encoded not in out:
            out.append(encoded)
    return out[:MAX_VARIANTS]


def _label_variants(label: str) -> list[str]:
    """``label`` and the spellings with deviation characters the old mapping folded into
    it (at most MAX_VARIANTS + 1). Built from the end of the label backwards, since "ss" may
    stand for "ß" or for two letters, and "sss" for "ßs" or "sß"."""
    tails: list[list[str]] = [[] for _ in range(len(label) + 1)]
    tails[len(label)] = [""]
    for i in range(len(label) - 1, -1, -1):
        options = [label[i] + tail for tail in tails[i + 1]]
        for folded, deviation in _DEVIATIONS:
            if label.startswith(folded, i):
                options += [deviation + tail for tail in tails[i + len(folded)]]
        tails[i] = options[:MAX_VARIANTS + 1]
    return tails[0]
