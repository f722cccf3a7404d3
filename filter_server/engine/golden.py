"""The golden corpus: labelled messages a policy must keep classifying acceptably.

A golden *set* is a group of raw messages with one label and one bound:

- `ham`: the most severe action allowed (`ACCEPT` or `TAG`; default `TAG`), so a policy that
  would quarantine or reject any of them is refused;
- `spam`: the least severe action required (`TAG`, `QUARANTINE` or `REJECT`; default `TAG`),
  so a policy that would let any of them through untagged is refused.

The same check runs in the admission webhook, in the operator (when the webhook is off) and
in `mailwarden policy test` (CI for policies); each reads the sets from its own source
(ConfigMaps or directories) and hands them here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from filter_server.engine.compiled import ACTIONS, CompiledPolicy, Hit

RANK = {action: index for index, action in enumerate(ACTIONS)}
LABELS = ("ham", "spam")
HAM_BOUNDS = ("ACCEPT", "TAG")
SPAM_BOUNDS = ("TAG", "QUARANTINE", "REJECT")
DEFAULT_BOUND = "TAG"
# Bounds the work of one check (the webhook answers within its timeout): 2,000 messages
# classify in about a second on one core.
MAX_MESSAGES = 2000
# Rules named per violation, the largest contributions first.
MAX_RULES_NAMED = 5


class GoldenCorpusInvalid(ValueError):
    """A golden set cannot be used as given (bad label, bound, or too many messages)."""


@dataclass(frozen=True)
class GoldenSet:
    source: str                                   # "ConfigMap golden-ham", "corpus/ham"
    label: str                                    # ham | spam
    bound: str = DEFAULT_BOUND                    # see the module docstring
    messages: tuple[tuple[str, bytes], ...] = ()  # (name, raw RFC 5322 bytes)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise GoldenCorpusInvalid(f"{self.source}: label must be ham or spam, not "
                                      f"{self.label!r}")
        allowed = HAM_BOUNDS if self.label == "ham" else SPAM_BOUNDS
        if self.bound not in allowed:
            raise GoldenCorpusInvalid(
                f"{self.source}: a {self.label} set's bound must be one of "
                f"{', '.join(allowed)}, not {self.bound!r}")

    def acceptable(self, action: str) -> bool:
        if self.label == "ham":
            return RANK[action] <= RANK[self.bound]
        return RANK[action] >= RANK[self.bound]

    def expectation(self) -> str:
        return f"at most {self.bound}" if self.label == "ham" else f"at least {self.bound}"


@dataclass(frozen=True)
class Violation:
    source: str
    message: str
    label: str
    expectation: str
    action: str
    score: float
    rules: tuple[Hit, ...]              # the candidate's hits that pushed it this way
    no_longer_firing: tuple[Hit, ...] = ()   # the baseline's hits the candidate lost

    def __str__(self) -> str:
        text = (f"golden {self.label} {self.source}/{self.message} would be {self.action} "
                f"(score {self.score:g}; expected {self.expectation})")
        if self.rules:
            text += "; rules: " + ", ".join(f"{h.name} {h.score:+g}" for h in self.rules)
        elif self.label == "spam":
            text += "; no rule scores it"
        if self.no_longer_firing:
            text += "; no longer firing: " + ", ".join(
                f"{h.name} {h.score:+g}" for h in self.no_longer_firing)
        return text


@dataclass
class GoldenReport:
    checked: int = 0
    by_label: dict[str, int] = field(default_factory=lambda: {"ham": 0, "spam": 0})
    violations: list[Violation] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations


def corpus_digest(sets: list[GoldenSet]) -> str:
    """Content hash of the sets (names, labels, bounds, bytes): the key of a cached verdict."""
    digest = hashlib.sha256()
    for golden in sets:
        for part in (golden.source, golden.label, golden.bound):
            digest.update(part.encode() + b"\0")
        for name, raw in golden.messages:
            digest.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
    return digest.hexdigest()


def _responsible(golden: GoldenSet, hits: list[Hit]) -> tuple[Hit, ...]:
    # Ham went too far: what scored it up. Spam fell short: what scored it down.
    sign = 1 if golden.label == "ham" else -1
    pushing = sorted((h for h in hits if h.score * sign > 0), key=lambda h: -abs(h.score))
    return tuple(pushing[:MAX_RULES_NAMED])


def check_corpus(candidate: CompiledPolicy, sets: list[GoldenSet],
                 baseline: CompiledPolicy | None = None) -> GoldenReport:
    """Classify every golden message with `candidate`; a violation per message outside its
    set's bound. With `baseline` (the policy serving now), a spam violation also names the
    rules that fired on the baseline but no longer do."""
    total = sum(len(golden.messages) for golden in sets)
    if total > MAX_MESSAGES:
        raise GoldenCorpusInvalid(f"the golden corpus holds {total} messages; at most "
                                  f"{MAX_MESSAGES} are checked per change")
    report = GoldenReport()
    for golden in sets:
        for name, raw in golden.messages:
            report.checked += 1
            report.by_label[golden.label] += 1
            verdict = candidate.classify(raw)
            if golden.acceptable(verdict.action):
                continue
            lost: tuple[Hit, ...] = ()
            if baseline is not None and golden.label == "spam":
                fired = {h.name for h in verdict.hits}
                lost = tuple(sorted((h for h in baseline.classify(raw).hits
                                     if h.score > 0 and h.name not in fired),
                                    key=lambda h: -h.score)[:MAX_RULES_NAMED])
            report.violations.append(Violation(
                golden.source, name, golden.label, golden.expectation(), verdict.action,
                verdict.score, _responsible(golden, verdict.hits), lost))
    return report


def messages_in(directory: Path) -> tuple[tuple[str, bytes], ...]:
    """Every regular file of `directory` (not recursive, hidden files skipped) as one
    message: the layout `kubectl create configmap NAME --from-file=DIRECTORY` reads."""
    return tuple((path.name, path.read_bytes()) for path in sorted(directory.iterdir())
                 if path.is_file() and not path.name.startswith("."))
