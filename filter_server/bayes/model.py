"""The statistical model: Robinson's per-token probabilities combined with Fisher's
chi-squared method (as in SpamBayes), then calibrated (see `calibrate.py`).

Training counts, per token, how many spam and ham messages contained it. A token seen in
fewer than `min_count` training messages is ignored, and the others are pulled towards 1/2
by a prior of strength `prior_strength` (so a token seen in three spam is a weaker clue than
one seen in thirty). Scoring keeps the decisive tokens of a message ("clues": probability
at least `min_strength` away from 1/2, at most `max_clues` of them), combines them with
Fisher's method — which lands near 1/2, "unsure", when a message holds strong evidence both
ways instead of letting the larger side win outright — and maps the result through the
calibration learnt at training time.

File format: gzip-compressed JSON
    {"format": "mailwarden-bayes/3", "tokenizer": "mailwarden-tokens/4",
     "nspam": int, "nham": int,
     "params": {"prior_strength": float, "min_strength": float, "max_clues": int,
                "min_count": int},
     "calibration": [[raw, probability], ...] or null,
     "trained": {...metadata}, "tokens": {token: [spam_count, ham_count], ...}}
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

from filter_server.bayes.calibrate import Calibration
from filter_server.bayes.tokenize import TOKENIZER_VERSION

FORMAT = "mailwarden-bayes/3"
# Raw combined scores strictly between these are "unsure": the clues point both ways.
# (SpamBayes' default cut-offs are 0.20 and 0.90; symmetric here, the policy decides.)
UNSURE_LOW, UNSURE_HIGH = 0.2, 0.8
PRIOR_PROBABILITY = 0.5
# A model decompresses to at most this much JSON. The corpus model is 0.7 MB (30,723
# tokens, 22 bytes each); this allows about three million tokens, which take ~450 MB
# once loaded. Unbounded, a 1 MB gzip bomb took a worker to 2.2 GB (issue 20).
MAX_MODEL_JSON_BYTES = 64 * 1024 * 1024


class ModelError(ValueError):
    """The model file is unreadable or not a Mailwarden model this version can use."""


@dataclass(frozen=True)
class ModelParams:
    """How token counts become a score (chosen by cross-source validation on the
    SpamAssassin corpus, see docs/model.md)."""
    # Robinson's prior: strength S of the belief that a rarely seen token is neutral. With
    # S = 0.5 a token seen in 3 spam and no ham has f = 0.93, in 30 spam f = 0.99.
    prior_strength: float = 0.5
    # Only tokens whose probability is at least this far from 1/2 count: the many weakly
    # leaning ones are correlated with each other and mostly add noise.
    min_strength: float = 0.3
    # The strongest clues only: a spam padded with encyclopedia text gains many weak ham
    # clues, which 50 keeps from outvoting its few strong spam clues (150 lost 5-19 points
    # of recall at 0.1% false positives across sources).
    max_clues: int = 50
    # Tokens seen in fewer training messages than this are no clue at all: a word seen in
    # two messages says more about those two messages than about spam.
    min_count: int = 3

    def check(self) -> None:
        if not 0 < self.prior_strength <= 100:
            raise ValueError(f"prior_strength must be in (0, 100], got {self.prior_strength}")
        if not 0 <= self.min_strength < 0.5:
            raise ValueError(f"min_strength must be in [0, 0.5), got {self.min_strength}")
        if not 1 <= self.max_clues <= 10000:
            raise ValueError(f"max_clues must be in [1, 10000], got {self.max_clues}")
        if not 1 <= self.min_count <= 1000:
            raise ValueError(f"min_count must be in [1, 1000], got {self.min_count}")


DEFAULT_PARAMS = ModelParams()


def token_probability(spam: int, ham: int, nspam: int, nham: int,
                      prior_strength: float = DEFAULT_PARAMS.prior_strength) -> float:
    """Robinson's f(w): the spam share of a token, corrected for the class sizes and pulled
    towards 1/2 when the token was seen only a few times."""
    spam_ratio = spam / nspam if nspam else 0.0
    ham_ratio = ham / nham if nham else 0.0
    if spam_ratio + ham_ratio == 0:
        return PRIOR_PROBABILITY
    p = spam_ratio / (spam_ratio + ham_ratio)
    n = spam + ham
    return (prior_strength * PRIOR_PROBABILITY + n * p) / (prior_strength + n)


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
    params: ModelParams = DEFAULT_PARAMS
    calibration: Calibration | None = None
    _prob: dict[str, float] = field(default_factory=dict, repr=False)
    # log(f) and log(1 - f) of every probability a clue can have, computed once at load:
    # tokens share few distinct probabilities (they depend on the counts only).
    _logs: dict[float, tuple[float, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.params.check()
        strength, prior = self.params.min_strength, self.params.prior_strength
        min_count = self.params.min_count
        self._prob = {}
        for token, (spam, ham) in self.counts.items():
            if spam + ham < min_count:
                continue
            f = token_probability(spam, ham, self.nspam, self.nham, prior)
            if abs(f - 0.5) >= strength:
                self._prob[token] = f
        self._logs = {f: (math.log(f), math.log1p(-f)) for f in set(self._prob.values())}

    def __len__(self) -> int:
        return len(self._prob)

    def can_be_clue(self, spam: int, ham: int) -> bool:
        """Whether a token with these counts can ever influence a score."""
        if spam + ham < self.params.min_count:
            return False
        f = token_probability(spam, ham, self.nspam, self.nham, self.params.prior_strength)
        return abs(f - 0.5) >= self.params.min_strength

    def clues(self, tokens: Iterable[str]) -> list[tuple[float, str]]:
        """The (probability, token) pairs that decide the score, most extreme first."""
        prob = self._prob
        found = sorted((prob[t], t) for t in tokens if t in prob)
        found.sort(key=lambda c: -abs(c[0] - 0.5))
        return found[:self._cutoff([f for f, _ in found])]

    def _cutoff(self, by_strength: list[float]) -> int:
        """How many of the clues (sorted by strength, strongest first) count: `max_clues`,
        plus any that are exactly as strong as the last one, so a tie is never broken by
        the arbitrary order of the token set."""
        n = self.params.max_clues
        if len(by_strength) <= n:
            return len(by_strength)
        weakest = abs(by_strength[n - 1] - 0.5)
        while n < len(by_strength) and abs(by_strength[n] - 0.5) == weakest:
            n += 1
        return n

    def raw_score(self, tokens: Iterable[str]) -> float | None:
        """The chi-squared combined score in [0, 1], or None when no token is a clue."""
        prob = self._prob
        if isinstance(tokens, (set, frozenset)):
            # a message's token set: intersect in C rather than test each token
            found = [prob[t] for t in prob.keys() & tokens]
        else:  # any iterable; a token listed twice counts twice
            found = [prob[t] for t in tokens if t in prob]
        if not found:
            return None
        # Sorted, so the floating-point sums do not depend on the (per-process) iteration
        # order of the token set: the same message always gets the very same score.
        if len(found) > self.params.max_clues:
            found.sort(key=lambda f: -abs(f - 0.5))
            found = found[:self._cutoff(found)]
        found.sort()
        logs = self._logs
        log_ham = 0.0
        log_spam = 0.0
        for f in found:  # a plain loop: left-to-right sums, the same bits on every Python
            lf, l1f = logs[f]
            log_ham += lf
            log_spam += l1f
        n = len(found)
        spamminess = 1.0 - chi2q(-2.0 * log_spam, 2 * n)
        hamminess = 1.0 - chi2q(-2.0 * log_ham, 2 * n)
        return (spamminess - hamminess + 1.0) / 2.0

    def spam_probability(self, tokens: Iterable[str]) -> float:
        """Spam probability in [0, 1] for a message's token set; exactly 0.5 means the
        model knows none of its tokens (no evidence either way)."""
        raw = self.raw_score(tokens)
        if raw is None:
            return 0.5
        return self.calibration(raw) if self.calibration is not None else raw

    def explain(self, tokens: Iterable[str]) -> tuple[float, str]:
        """(spam probability, how sure): "no evidence" when no token is a clue, "unsure"
        when the clues point both ways (raw combined score between UNSURE_LOW and
        UNSURE_HIGH), else "sure"."""
        raw = self.raw_score(tokens)
        if raw is None:
            return 0.5, "no evidence"
        p = self.calibration(raw) if self.calibration is not None else raw
        return p, ("unsure" if UNSURE_LOW < raw < UNSURE_HIGH else "sure")

    # --- persistence ------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        doc = {"format": FORMAT, "tokenizer": TOKENIZER_VERSION,
               "nspam": self.nspam, "nham": self.nham,
               "params": {"prior_strength": self.params.prior_strength,
                          "min_strength": self.params.min_strength,
                          "max_clues": self.params.max_clues,
                          "min_count": self.params.min_count},
               "calibration": ([[round(x, 6), round(y, 6)] for x, y in self.calibration.knots]
                               if self.calibration is not None else None),
               "trained": self.trained,
               "tokens": {t: list(c) for t, c in sorted(self.counts.items())}}
        # mtime=0: the same model always gives the same bytes (and the same policy hash)
        return gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), 9, mtime=0)

    @classmethod
    def from_bytes(cls, data: bytes) -> "BayesModel":
        try:
            doc = json.loads(_gunzip(data, MAX_MODEL_JSON_BYTES))
        except ModelError:
            raise
        except (OSError, EOFError, ValueError, zlib.error, RecursionError) as exc:
            raise ModelError(f"not a gzip-compressed JSON model: {exc}") from exc
        if not isinstance(doc, dict) or "format" not in doc:
            raise ModelError(f"not a Mailwarden model (no \"format\" field; expected {FORMAT})")
        if doc["format"] != FORMAT:
            if isinstance(doc["format"], str) and doc["format"].startswith("mailwarden-bayes/"):
                raise ModelError(f"model format {doc['format']} is not supported by this "
                                 f"version (it reads {FORMAT}); retrain the model with "
                                 "`mailwarden train`")
            raise ModelError(f"not a Mailwarden model (format {doc['format']!r}, "
                             f"expected {FORMAT})")
        if doc.get("tokenizer") != TOKENIZER_VERSION:
            raise ModelError(f"model was trained with tokenizer {doc.get('tokenizer')!r}, this "
                             f"version tokenizes as {TOKENIZER_VERSION}; retrain the model "
                             "with `mailwarden train`")
        try:
            p = doc["params"]
            params = ModelParams(float(p["prior_strength"]), float(p["min_strength"]),
                                 int(p["max_clues"]), int(p["min_count"]))
            knots = doc.get("calibration")
            calibration = (Calibration([(float(x), float(y)) for x, y in knots])
                           if knots is not None else None)
            counts = {str(t): (int(c[0]), int(c[1])) for t, c in doc["tokens"].items()}
            return cls(int(doc["nspam"]), int(doc["nham"]), counts, doc.get("trained", {}),
                       params, calibration)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ModelError(f"malformed model: {exc!r}") from exc


def _gunzip(data: bytes, limit: int) -> bytes:
    """`gzip.decompress(data)`, refusing (ModelError) to produce more than `limit` bytes:
    decompression stops there instead of filling memory."""
    out: list[bytes] = []
    size = 0
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # one gzip member
        chunk = inflater.decompress(rest, limit + 1 - size)
        size += len(chunk)
        out.append(chunk)
        if size > limit or inflater.unconsumed_tail:
            raise ModelError(f"the model decompresses to more than {limit:,} bytes "
                             "(a model this large would not fit a filter worker)")
        if not inflater.eof:
            raise EOFError("compressed model ends in the middle of its data")
        rest = inflater.unused_data
    return b"".join(out)
