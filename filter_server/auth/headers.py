"""The few header fields authentication reads, taken from the raw header block alone
(bounded, linear: one split into lines), before the message is parsed for the rules."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

# Only this much of a message's start is searched for the end of its headers; real header
# blocks are a few KiB (a long ARC chain perhaps 30 KiB).
MAX_HEADER_BLOCK_BYTES = 256 * 1024
# A DKIM-Signature, ARC or From field longer than this is not evaluated (real ones stay
# under 2 KiB; longer ones only cost time): the signature is a permerror.
MAX_FIELD_BYTES = 16 * 1024
MAX_SIGNATURES = 5        # DKIM signatures verified per message (the first ones)
MAX_ARC_SETS = 10         # ARC sets followed (RFC 8617 allows 50; real chains hold 1-4)


@dataclass(frozen=True)
class HeaderField:
    name: str          # as written
    value: str         # unfolded, latin-1 decoded (bytes are kept one to one)


def header_fields(raw: bytes) -> list[HeaderField]:
    """The header fields of `raw`, in order, unfolded."""
    block = raw[:MAX_HEADER_BLOCK_BYTES]
    # (name, pieces of the value): a folded value is joined once at the end, not grown
    # line by line (that copies it per line: quadratic in a header folded over the block)
    fields: list[tuple[str, list[str]]] = []
    for line in block.decode("latin-1").split("\n"):
        line = line.rstrip("\r")
        if not line:
            break
        if line[0] in " \t":
            if fields:
                fields[-1][1].append(line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep and name and " " not in name and "\t" not in name:
            fields.append((name, [value.strip()]))
    return [HeaderField(name, " ".join(pieces)) for name, pieces in fields]


def tags(value: str) -> dict[str, str] | None:
    """A DKIM-style tag=value list (RFC 6376 3.2), or None when malformed or too long."""
    if len(value) > MAX_FIELD_BYTES:
        return None
    out: dict[str, str] = {}
    for spec in value.split(";"):
        if not spec.strip():
            continue
        key, sep, tag_value = spec.partition("=")
        key = key.strip()
        if not sep or not key or key in out:
            return None
        out[key] = "".join(tag_value.split())
    return out


def from_domains(fields: list[HeaderField]) -> tuple[list[str], int]:
    """Domains of the From header's addresses, and how many From fields there are."""
    values = [f.value[:MAX_FIELD_BYTES] for f in fields if f.name.lower() == "from"]
    domains: list[str] = []
    for value in values:
        # getaddresses is linear on bounded input except for deeply nested comments, which
        # it handles by recursion: strip comments' parentheses beyond a small depth first.
        try:
            pairs = email.utils.getaddresses([_flatten_comments(value)])
        except (RecursionError, ValueError, IndexError):
            pairs = []
        for _name, address in pairs:
            _local, at, domain = address.rpartition("@")
            if at and domain:
                domains.append(domain.lower().rstrip("."))
    return domains, len(values)


def _flatten_comments(value: str, max_depth: int = 8) -> str:
    """`value` with parentheses nested deeper than `max_depth` dropped (one pass)."""
    if value.count("(") <= max_depth:
        return value
    out: list[str] = []
    depth = 0
    for ch in value:
        if ch == "(":
            depth += 1
            if depth > max_depth:
                continue
        elif ch == ")":
            depth -= 1
            if depth >= max_depth:
                continue
            depth = max(depth, 0)
        out.append(ch)
    return "".join(out)


def sender_domain(address: str) -> str:
    """The domain of an envelope address (`<a@b>`, `a@b` or empty)."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    _name, parsed = email.utils.parseaddr(address) if "@" in address else ("", "")
    return parsed.rpartition("@")[2].lower().rstrip(".") if parsed else ""
