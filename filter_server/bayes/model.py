"""The statistical model: Robinson's per-token probabilities combined with Fisher's
chi-squared method (as in SpamBayes). Training counts, per token, how many spam and ham
messages contained it; scoring combines the most extreme tokens of a message.

File format: gzip-compressed JSON
    {"format": "mailwarden-bayes/1", "nspam": int, "nham": int,
     "tokens": {token: [spam_count, ham_count], ...}, "trained": {...metadata}}
"""

from __future__ import annotations

import gzip
import heapq
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

FORMAT = "mailwarden-bayes/1"
# Robinson's prior: strength S of the belief that an unseen token is neutral (X).
PRIOR_STRENGTH = 0.45
PRIOR_PROBABILITY = 0.5
# Only tokens at least this far from 0.5 take part, at most MAX_CLUES of them.
MIN_STRENGTH = 0.1
MAX_CLUES = 150


class ModelError(ValueError):
    """The model file is unreadable or not a Mailwarden model."""


def token_probability(spam: int, ham: int, nspam: int, nham: int) -> float:
    spam_ratio = spam / nspam if nspam else 0.0
    ham_ratio = ham / nham if nham else 0.0
    if spam_ratio + ham_ratio == 0:
        return PRIOR_PROBABILITY
    p = spam_ratio / (spam_ratio + ham_ratio)
    n = spam + ham
    return (PRIOR_STRENGTH * PRIOR_PROBABILITY + n * p) / (PRIOR_STRENGTH + n)


def chi2q(x2: float, dof: int) -> float:
    """P(chi-squared with `dof` (even) degrees of freedom >= x2)."""
    m = x2 / 2.0
    term = math.exp(-m)
    total = term
    for i in range(1, dof // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


@dataclass
class BayesModel:
    nspam: int
    nham: int
    counts: dict[str, tuple[int, int]]
    trained: dict[str, Any] = field(default_factory=dict)
    _prob: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._prob = {}
        for token, (spam, ham) in self.counts.items():
            f = token_probability(spam, ham, self.nspam, self.nham)
            if abs(f - 0.5) >= MIN_STRENGTH:
                self._prob[token] = f

    def __len__(self) -> int:
        return len(self._prob)

    def clues(self, tokens: Iterable[str]) -> list[tuple[float, str]]:
        """The (probability, token) pairs that decide the score, most extreme first."""
        prob = self._prob
        found = [(prob[t], t) for t in tokens if t in prob]
        return heapq.nlargest(MAX_CLUES, found, key=lambda c: abs(c[0] - 0.5))

    def spam_probability(self, tokens: Iterable[str]) -> float:
        """Spam probability in [0, 1] for a message's token set; 0.5 means no evidence."""
        clues = self.clues(tokens)
        if not clues:
            return 0.5
        log_ham = sum(math.log(f) for f, _ in clues)
        log_spam = sum(math.log1p(-f) for f, _ in clues)
        n = len(clues)
        spamminess = 1.0 - chi2q(-2.0 * log_spam, 2 * n)
        hamminess = 1.0 - chi2q(-2.0 * log_ham, 2 * n)
        return (spamminess - hamminess + 1.0) / 2.0

    # --- persistence ------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "nspam": self.nspam, "nham": self.nham,
               "trained": self.trained,
               "tokens": {t: list(c) for t, c in sorted(self.counts.items())}}
        # mtime=0: the same model always gives the same bytes (and the same policy hash)
        return gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), 9, mtime=0)

    @classmethod
    def from_bytes(cls, data: bytes) -> "BayesModel":
        try:
            doc = json.loads(gzip.decompress(data))
        except (OSError, EOFError, ValueError) as exc:
            raise ModelError(f"not a gzip-compressed JSON model: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ModelError(f"not a {FORMAT} model")
        try:
            counts = {str(t): (int(c[0]), int(c[1])) for t, c in doc["tokens"].items()}
            return cls(int(doc["nspam"]), int(doc["nham"]), counts, doc.get("trained", {}))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ModelError(f"malformed model: {exc!r}") from exc
