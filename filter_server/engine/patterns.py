"""Hyperscan-backed multi-pattern matching.

Hyperscan was chosen over RE2's `Set` by measurement (benchmarks/engine_choice.py): on
1,000 rules over SpamAssassin-corpus bodies it scans ~30x faster. Both are automata-based and
linear-time, so no policy can make matching super-linear; patterns Hyperscan cannot compile
(backreferences, lookaround) are rejected at validation time by `pattern_error`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable

import hyperscan

# SINGLEMATCH: we only need to know *whether* a rule matched, and it bounds callbacks per
# scan to one per pattern. UTF8: inputs are always valid UTF-8 (we encode decoded text).
BASE_FLAGS = hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_UTF8
# Line-oriented targets (headers, URIs, senders) hold one value per line: ^ and $ anchor
# to a value, not to the whole buffer.
LINE_FLAGS = BASE_FLAGS | hyperscan.HS_FLAG_MULTILINE


def pattern_error(pattern: str) -> str | None:
    """Why Hyperscan cannot take `pattern`, or None when it can."""
    if "\x00" in pattern:
        return "must not contain NUL characters"
    db = hyperscan.Database()
    try:
        db.compile(expressions=[pattern.encode("utf-8")], ids=[0], elements=1,
                   flags=[LINE_FLAGS])
    except hyperscan.error as exc:
        reason = str(exc)
        if "empty buffer" in reason:
            return "matches the empty string, so it would fire on every message"
        return f"not supported by the matching engine: {reason}"
    return None


@dataclass(frozen=True)
class PatternRule:
    index: int      # position in the policy's rule list
    pattern: str


class TargetDatabase:
    """All patterns that scan one kind of text, compiled into one Hyperscan database."""

    def __init__(self, rules: Iterable[PatternRule], *, line_mode: bool) -> None:
        rules = list(rules)
        self.rule_indexes = [r.index for r in rules]
        self._db = hyperscan.Database()
        flags = LINE_FLAGS if line_mode else BASE_FLAGS
        self._db.compile(expressions=[r.pattern.encode("utf-8") for r in rules],
                         ids=list(range(len(rules))), elements=len(rules),
                         flags=[flags] * len(rules))
        self._prototype = hyperscan.Scratch(self._db)
        self._local = threading.local()  # scratch space is per thread

    def scan(self, data: bytes, fired: list[int]) -> None:
        """Append the rule index of every pattern that matches `data` to `fired`."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = self._prototype.clone()
        indexes = self.rule_indexes

        def on_match(pattern_id: int, start: int, end: int, flags: int, ctx: object) -> None:
            fired.append(indexes[pattern_id])

        self._db.scan(data, match_event_handler=on_match, scratch=scratch)
