"""Realistic rule sets of any size, mined deterministically from the TRAIN split.

Rule-count scaling serves the example policy's thresholds, lists and model with its rules
replaced by N generated ones (N = 10, 100, 1,000, 5,000). The rules look like what a mail
admin writes, in a fixed mix of kinds:

    body phrase (word pair)          40%   (?i)\\bcredit\\s+card\\b
    body phrase (three words)        15%   (?i)\\bclick\\s+here\\s+to\\b
    body words with a bounded gap    10%   (?i)\\bfree\\W+(?:\\w+\\W+){0,2}offer\\b
    Subject word                     15%   header Subject: (?i)\\bmortgage\\b
    link host                        10%   uri: (?i)^(?:[a-z][a-z0-9+.-]*://)?
                                                (?:[^/?#]*\\.)?example\\.com(?:[:/?#]|$)
    sender domain                     5%   sender: (?i)@(?:[a-z0-9-]+\\.)*example\\.com$
    X-Mailer product                  5%   header X-Mailer: (?i)\\bproduct\\b

Candidates are counted by document frequency in train spam (s of S) and ham (h of H);
spamminess = ln((s + 0.5) / (S + 1)) - ln((h + 0.5) / (H + 1)). Most rules (85%) take the
spammiest candidates (s >= 3) and score +min(3, spamminess / 2); the rest take the
hammiest (h >= 10) and score max(-2, spamminess / 2). Ties break on the text, so the same
corpus always gives the same rules. Each set passes `filter_server.policy.validate`.
The test split is never read here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from filter_server.message import parse_message
from filter_server.policy.validate import validate_policy
from mailwarden_local.corpus import Split

KINDS: tuple[tuple[str, float], ...] = (
    ("bigram", 0.40), ("trigram", 0.15), ("gap", 0.10), ("subject", 0.15),
    ("uri", 0.10), ("sender", 0.05), ("xmailer", 0.05),
)
NEGATIVE_SHARE = 0.15
MAX_BODY_CHARS = 20000
_WORD = re.compile(r"[a-z]{3,14}")
# A host name with an alphabetic top-level label (not an IP address).
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,}$")
# Words too common to make a phrase rule worth writing.
_STOP = frozenset("the and for you your with that this are from have not but was can all "
                  "will our has any may more one out get use who its".split())


@dataclass
class Counts:
    spam: Counter
    ham: Counter


@dataclass
class Mined:
    nspam: int
    nham: int
    kinds: dict[str, Counts]
    _pools: dict[str, tuple[list, list]] = field(default_factory=dict, repr=False)

    def pools(self, kind: str) -> tuple[list, list]:
        """(spammiest first, hammiest first) candidates of a kind; ranked once."""
        if kind not in self._pools:
            self._pools[kind] = (_ranked(self.kinds[kind], self, True),
                                 _ranked(self.kinds[kind], self, False))
        return self._pools[kind]


def _body_features(text: str) -> tuple[set, set, set]:
    words = [w for w in _WORD.findall(text[:MAX_BODY_CHARS].lower())]
    bigrams, trigrams, gaps = set(), set(), set()
    for i, w in enumerate(words):
        if i + 1 < len(words) and not {w, words[i + 1]} <= _STOP:
            bigrams.add((w, words[i + 1]))
        if i + 2 < len(words) and not {w, words[i + 1], words[i + 2]} <= _STOP:
            trigrams.add((w, words[i + 1], words[i + 2]))
        if i + 3 < len(words) and w not in _STOP and words[i + 3] not in _STOP:
            gaps.add((w, words[i + 3]))
    return bigrams, trigrams, gaps


def _registrable(host: str) -> str:
    labels = host.lower().rstrip(".").split(".")
    return ".".join(labels[-2:]) if len(labels) >= 2 else ""


def features(raw: bytes) -> dict[str, set]:
    msg = parse_message(raw)
    bigrams, trigrams, gaps = _body_features(msg.body_text)
    subject = {w for w in _WORD.findall(msg.header("subject").lower()) if w not in _STOP}
    hosts = {h for h in (_registrable(u) for u in msg.uri_hosts) if _HOST.match(h)}
    sender = set()
    if "@" in msg.from_address:
        domain = msg.from_address.rpartition("@")[2].lower()
        if _HOST.match(domain):
            sender.add(domain)
    xmailer = {w for w in _WORD.findall(msg.header("x-mailer").lower()) if w not in _STOP}
    return {"bigram": bigrams, "trigram": trigrams, "gap": gaps, "subject": subject,
            "uri": hosts, "sender": sender, "xmailer": xmailer}


def mine(split: Split, progress: Callable[[str], None] = print) -> Mined:
    kinds = {kind: Counts(Counter(), Counter()) for kind, _ in KINDS}
    totals = {}
    for label in ("spam", "ham"):
        files = split.files("train", label)
        for path in files:
            for kind, values in features(path.read_bytes()).items():
                getattr(kinds[kind], label).update(values)
        totals[label] = len(files)
        progress(f"  rule mining: {len(files)} train {label} messages read")
    return Mined(totals["spam"], totals["ham"], kinds)


def _spamminess(s: int, h: int, mined: Mined) -> float:
    return math.log((s + 0.5) / (mined.nspam + 1)) - math.log((h + 0.5) / (mined.nham + 1))


def _ranked(counts: Counts, mined: Mined, positive: bool) -> list[tuple[Any, float, int, int]]:
    out = []
    for key in set(counts.spam) | set(counts.ham):
        s, h = counts.spam.get(key, 0), counts.ham.get(key, 0)
        if (positive and s >= 3) or (not positive and h >= 10):
            out.append((key, _spamminess(s, h, mined), s, h))
    out.sort(key=lambda item: (-item[1] if positive else item[1], str(item[0])))
    return out


def _rule(kind: str, key: Any, index: int, score: float, s: int, h: int) -> dict[str, Any]:
    name = f"GEN_{kind.upper()}_{index:04d}"
    seen = f"(train: {s} spam, {h} ham messages)"
    if kind == "bigram":
        a, b = key
        return {"name": name, "target": "body", "pattern": rf"(?i)\b{a}\s+{b}\b",
                "score": score, "description": f"Body phrase '{a} {b}' {seen}"}
    if kind == "trigram":
        a, b, c = key
        return {"name": name, "target": "body", "pattern": rf"(?i)\b{a}\s+{b}\s+{c}\b",
                "score": score, "description": f"Body phrase '{a} {b} {c}' {seen}"}
    if kind == "gap":
        a, b = key
        return {"name": name, "target": "body",
                "pattern": rf"(?i)\b{a}\W+(?:\w+\W+){{0,2}}{b}\b", "score": score,
                "description": f"Body words '{a} ... {b}' close together {seen}"}
    if kind == "subject":
        return {"name": name, "target": "header", "header": "Subject",
                "pattern": rf"(?i)\b{key}\b", "score": score,
                "description": f"Subject word '{key}' {seen}"}
    if kind == "uri":
        host = re.escape(key)
        return {"name": name, "target": "uri",
                "pattern": rf"(?i)^(?:[a-z][a-z0-9+.-]*://)?(?:[^/?#]*\.)?{host}(?:[:/?#]|$)",
                "score": score, "description": f"Link to {key} {seen}"}
    if kind == "sender":
        domain = re.escape(key)
        return {"name": name, "target": "sender",
                "pattern": rf"(?i)@(?:[a-z0-9-]+\.)*{domain}$", "score": score,
                "description": f"Sender domain {key} {seen}"}
    if kind == "xmailer":
        return {"name": name, "target": "header", "header": "X-Mailer",
                "pattern": rf"(?i)\b{key}\b", "score": score,
                "description": f"X-Mailer mentions '{key}' {seen}"}
    raise ValueError(kind)


def _quotas(n: int) -> dict[str, int]:
    """Rules per kind for a set of n: the KINDS shares, rounded so they add up to n."""
    raw = {kind: share * n for kind, share in KINDS}
    quotas = {kind: int(value) for kind, value in raw.items()}
    for kind in sorted(raw, key=lambda k: (-(raw[k] - quotas[k]), k))[:n - sum(quotas.values())]:
        quotas[kind] += 1
    return quotas


def generate(mined: Mined, n: int) -> list[dict[str, Any]]:
    """n rules in the documented mix; a kind short of candidates is filled with bigrams."""
    rules: list[dict[str, Any]] = []
    used: set[tuple[str, Any]] = set()
    shortfall = 0

    def take(kind: str, count: int) -> int:
        positive, negative = mined.pools(kind)
        want_negative = int(round(count * NEGATIVE_SHARE))
        taken = 0
        for pool, limit, sign in ((positive, count - want_negative, 1),
                                  (negative, want_negative, -1)):
            got = 0
            for key, spamminess, s, h in pool:
                if got >= limit:
                    break
                if (kind, key) in used:
                    continue
                used.add((kind, key))
                score = min(3.0, spamminess / 2) if sign > 0 else max(-2.0, spamminess / 2)
                rules.append(_rule(kind, key, len(rules) + 1, round(score, 2), s, h))
                got += 1
            taken += got
        return taken

    for kind, count in _quotas(n).items():
        shortfall += count - take(kind, count)
    if shortfall:
        shortfall -= take("bigram", shortfall)
    if shortfall:
        raise ValueError(f"the train split yields only {len(rules)} candidate rules, "
                         f"fewer than {n}")
    return rules


def scaled_policy(base: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """`base` (thresholds, lists, model) with `rules` as its only rules."""
    policy = {k: v for k, v in base.items() if k not in ("rules", "metaRules")}
    policy["rules"] = rules
    return policy


def check(policy: dict[str, Any], base_dir: Path | None = None) -> None:
    errors = validate_policy(policy, base_dir=base_dir)
    if errors:
        shown = "; ".join(str(e) for e in errors[:5])
        raise ValueError(f"generated policy does not validate ({len(errors)} errors): {shown}")


def rule_sets(mined: Mined, sizes: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    return {n: generate(mined, n) for n in sizes}
