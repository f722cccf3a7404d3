"""Scores learnt from labelled mail: rule scores, the model's weight and the thresholds of
every action, fitted together on messages the model did not see (as SpamAssassin's score
generation fits its rule scores to a corpus).

    labelled messages -> held out: a validation share (by content hash), the rest "fit"
    fit messages -> k-fold: each gets a model probability from a model trained without it
                 -> the rules that fire on it (the policy, without its model)
    -> L2-regularised logistic regression of "is spam" on [rules that fired, 2p - 1]
       (balanced classes; each rule keeps the sign its author gave it, a 0-score rule
       stays a helper; rules firing on fewer than MIN_RULE_MESSAGES keep their score)
    -> scores = the fitted log-odds weights: a point is a factor e in the odds
    -> thresholds per action: the lowest score at which at most the target share of fit
       ham reaches the action (TAG 0.2%, QUARANTINE 0.1%, REJECT 0.01% by default); when
       the fit ham are too few to show a target, one point above the highest ham;
       and never below the action's floor (below)
    -> validation messages, classified by a model trained on the fit messages with the
       fitted policy: the expected false-positive rate and recall of each action.

Floors: what a threshold fitted on the site's own mail cannot show is how far other mail
drifts. Trained on one release of the SpamAssassin corpus and tested on the other release
and on its hard ham (commercial newsletters), the model was as sure of 14-20% of the
newsletters as of spam, and thresholds at the fit ham's 0.2% tail let 2-8% of the other
release's ham through (benchmarks/cross_source.py). So every threshold also has a floor
relative to the model weight w, chosen on both cross-source splits together:
    TAG         w (2 * 0.99 - 1): the model alone tags only a message it is sure of
                (calibrated p >= 0.99); less sure, rules must add the rest
    QUARANTINE  w + 1.5: a sure model and rules worth 1.5 points (a factor 4.5 in odds)
    REJECT      w + 3:   a sure model and rules worth 3 points: no ham of either split
                reached it; 24-25% of the spam did
The model alone therefore never quarantines or rejects: those need rules to agree.

To refit after adding rules (e.g. built-in authentication rules): add them to the policy
with any score of the sign they should have (positive: spam sign, negative: ham sign, 0:
helper for meta rules only), run `mailwarden train --policy ... --policy-out ...` again.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from filter_server.bayes.calibrate import fit_isotonic
from filter_server.bayes.model import DEFAULT_PARAMS, BayesModel, ModelParams
from filter_server.bayes.sources import count_files, describe, iter_messages
from filter_server.bayes.tokenize import tokenize
from filter_server.bayes.train import (
    CALIBRATION_MIN_BLOCK,
    DEFAULT_CALIBRATION_FOLDS,
    DEFAULT_MAX_BYTES,
    train_from_tokens,
)
from filter_server.engine.compiled import CompiledPolicy
from filter_server.policy.loader import LoadedPolicy, policy_hash

ACTION_LEVELS = ("TAG", "QUARANTINE", "REJECT")
DEFAULT_TARGET_FPR = {"TAG": 0.002, "QUARANTINE": 0.001, "REJECT": 0.0001}
VALIDATION_SHARE = 5          # 1 in 5 messages (by content hash) is held out
MIN_VALIDATION = 20           # of each class, else rates are reported on the fit messages
MIN_RULE_MESSAGES = 5         # a rule seen firing less often keeps its score
FIT_FOLDS = 5
L2 = 0.5                      # on every rule weight, in units of (log-odds)^2, per class
MAX_WEIGHT = 8.0
MIN_TAG = 0.5                 # a message with no evidence (score 0) is never tagged
MIN_FITTED_SCORE = 0.01       # a fitted rule's smallest score: it keeps its sign
# Floors relative to the model weight (module docstring): how sure the model alone must be
# to tag, and how many points of rules QUARANTINE and REJECT need beyond a sure model.
SURE_PROBABILITY = 0.99
CORROBORATION = {"QUARANTINE": 1.5, "REJECT": 3.0}
UNPROVEN_MARGIN = 1.0         # above the highest fit ham when a target is below 1 message

Progress = Callable[[str], None]


@dataclass
class Example:
    name: str
    is_spam: bool
    tokens: set[str]
    fired: frozenset[str]          # rules that fired (no model)
    digest: str                    # of the raw bytes: the fold and the held-out share


@dataclass
class ActionRates:
    action: str
    threshold: float
    ham_flagged: int
    ham: int
    spam_caught: int
    spam: int

    def line(self) -> str:
        fpr = 100 * self.ham_flagged / self.ham if self.ham else 0.0
        recall = 100 * self.spam_caught / self.spam if self.spam else 0.0
        return (f"{self.action:>10} (score >= {self.threshold:6.2f}): ham {self.ham_flagged}/"
                f"{self.ham} ({fpr:.2f}%), spam {self.spam_caught}/{self.spam} ({recall:.1f}%)")


@dataclass
class FitResult:
    model: BayesModel
    policy: dict[str, Any]
    scores: dict[str, float]                # rule -> fitted score
    kept: list[str]                         # rules too rare to fit: score unchanged
    weight: float
    thresholds: dict[str, float]
    rates: list[ActionRates]
    rates_on: str                           # "validation" or "fit (cross-validated)"
    notes: list[str] = field(default_factory=list)


def _stderr_progress(line: str) -> None:
    import sys
    print(line, file=sys.stderr, flush=True)


def load_examples(sources: Sequence[Path], is_spam: bool, policy: CompiledPolicy,
                  progress: Progress) -> list[Example]:
    """Parse, tokenize and run the policy's rules on every message of `sources`."""
    label = "spam" if is_spam else "ham"
    out: list[Example] = []
    for source in sources:
        total = count_files(source)
        progress(f"{label}: reading {source} ({describe(source)}"
                 f"{f', {total} files' if total is not None else ''})")
        started = time.monotonic()
        n = 0
        for name, raw in iter_messages(source):
            parsed = policy.parse(raw)
            fired = frozenset(h.name for h in policy.rule_hits(parsed))
            out.append(Example(name, is_spam, tokenize(parsed), fired,
                               hashlib.sha256(raw).hexdigest()))
            n += 1
            if n % 500 == 0:
                rate = n / max(time.monotonic() - started, 1e-9)
                of = f"/{total}" if total is not None else ""
                eta = (f", ~{(total - n) / rate:.0f}s left" if total is not None else "")
                progress(f"{label}: {n}{of} messages ({rate:.0f}/s{eta})")
        progress(f"{label}: {n} messages from {source} "
                 f"in {time.monotonic() - started:.1f}s")
    return out


def _held_out(example: Example) -> bool:
    return int(example.digest[:8], 16) % VALIDATION_SHARE == 0


def out_of_fold_probabilities(examples: Sequence[Example], params: ModelParams,
                              progress: Progress, calibrate: bool = True) -> list[float]:
    """Each example's spam probability from models trained without it, calibrated as the
    served model will be (`calibrate` False: the raw combined score, as a model trained
    with calibration off reports)."""
    spam = [e for e in examples if e.is_spam]
    ham = [e for e in examples if not e.is_spam]
    raw_by_id: dict[int, float] = {}
    # cross_validated_scores returns (raw, label) only: score per fold here to keep ids
    from filter_server.bayes.train import _fold, _model
    folds = FIT_FOLDS
    spam_fold = [_fold(e.tokens, folds) for e in spam]
    ham_fold = [_fold(e.tokens, folds) for e in ham]
    for f in range(folds):
        model = _model((e.tokens for e, k in zip(spam, spam_fold) if k != f),
                       (e.tokens for e, k in zip(ham, ham_fold) if k != f), params)
        for group, fold_of in ((spam, spam_fold), (ham, ham_fold)):
            for e, k in zip(group, fold_of):
                if k == f:
                    raw = model.raw_score(e.tokens)
                    if raw is not None:
                        raw_by_id[id(e)] = raw
        progress(f"fitting: fold {f + 1}/{folds} scored")
    pairs = [(raw_by_id[id(e)], e.is_spam) for e in examples if id(e) in raw_by_id]
    calibration = fit_isotonic([r for r, _ in pairs], [y for _, y in pairs],
                               min_block=CALIBRATION_MIN_BLOCK) if pairs and calibrate else None
    out = []
    for e in examples:
        raw = raw_by_id.get(id(e))
        out.append(0.5 if raw is None else (calibration(raw) if calibration else raw))
    return out


def fit_weights(fired: Sequence[frozenset[str]], model_term: Sequence[float],
                labels: Sequence[bool], signs: dict[str, int], *,
                iterations: int = 400) -> tuple[dict[str, float], float]:
    """L2-regularised logistic regression with sign constraints (projected Adam).

    Returns ({rule: weight}, model weight); the intercept is fitted and dropped (the
    thresholds absorb it)."""
    names = sorted(signs)
    index = {n: i for i, n in enumerate(names)}
    rows = [[index[n] for n in f if n in index] for f in fired]
    n_spam = sum(labels) or 1
    n_ham = (len(labels) - sum(labels)) or 1
    sample_weight = [0.5 / n_spam if y else 0.5 / n_ham for y in labels]
    dim = len(names) + 2                      # rules, model, intercept
    w = [0.0] * dim
    w[len(names)] = 1.0
    m1 = [0.0] * dim
    m2 = [0.0] * dim
    step, beta1, beta2 = 0.05, 0.9, 0.999
    lam = L2 / (n_spam + n_ham)
    for it in range(1, iterations + 1):
        grad = [0.0] * dim
        for row, m, y, sw in zip(rows, model_term, labels, sample_weight):
            z = w[-1] + w[len(names)] * m
            for i in row:
                z += w[i]
            p = 1.0 / (1.0 + math.exp(-max(min(z, 35.0), -35.0)))
            g = (p - y) * sw
            for i in row:
                grad[i] += g
            grad[len(names)] += g * m
            grad[-1] += g
        for i in range(len(names) + 1):
            grad[i] += 2 * lam * w[i] * (n_spam + n_ham) / (n_spam + n_ham) ** 1
        for i in range(dim):
            m1[i] = beta1 * m1[i] + (1 - beta1) * grad[i]
            m2[i] = beta2 * m2[i] + (1 - beta2) * grad[i] * grad[i]
            update = step * (m1[i] / (1 - beta1 ** it)) / (math.sqrt(m2[i] / (1 - beta2 ** it))
                                                          + 1e-12)
            w[i] -= update
            if i < len(names):
                sign = signs[names[i]]
                w[i] = min(max(w[i], 0.0), MAX_WEIGHT) if sign > 0 else \
                    max(min(w[i], 0.0), -MAX_WEIGHT)
            elif i == len(names):
                w[i] = min(max(w[i], 0.0), MAX_WEIGHT)
    return {n: w[i] for n, i in index.items()}, w[len(names)]


def threshold_floors(model_weight: float) -> dict[str, float]:
    """The lowest threshold of each action for a policy whose model has this weight."""
    return {"TAG": max(MIN_TAG, model_weight * (2 * SURE_PROBABILITY - 1)),
            **{action: model_weight + points for action, points in CORROBORATION.items()}}


def choose_thresholds(ham_scores: Sequence[float], targets: dict[str, float],
                      notes: list[str], model_weight: float = 0.0) -> dict[str, float]:
    """Per action, the lowest score at which at most `target` of the ham reach it, and at
    least the action's floor (`threshold_floors`)."""
    ranked = sorted(ham_scores, reverse=True)
    out: dict[str, float] = {}
    floors = threshold_floors(model_weight)
    floor = MIN_TAG
    for action in ACTION_LEVELS:
        target = targets[action]
        allowed = int(target * len(ranked))
        if allowed < 1:
            threshold = (ranked[0] if ranked else 0.0) + UNPROVEN_MARGIN
            notes.append(f"{action}: {len(ranked)} ham cannot show a {100 * target:g}% "
                         f"false-positive rate; threshold set {UNPROVEN_MARGIN:g} above the "
                         "highest-scoring ham")
        else:
            threshold = ranked[allowed] + 1e-3 if allowed < len(ranked) else ranked[-1]
        threshold = max(round(threshold + 0.005, 2), floor)
        if threshold < floors[action]:
            notes.append(f"{action}: the fit ham allow {threshold:g}; raised to its floor "
                         f"{floors[action]:.2f} (mail from elsewhere drifts, docs/model.md)")
            threshold = round(floors[action] + 0.005, 2)
        out[action] = threshold
        floor = threshold
    return out


def _score(fired: frozenset[str], p: float, scores: dict[str, float], weight: float) -> float:
    return sum(scores.get(n, 0.0) for n in fired) + weight * (2.0 * p - 1.0)


def rates(scored: Iterable[tuple[float, bool]], thresholds: dict[str, float]) -> list[ActionRates]:
    scored = list(scored)
    ham = [s for s, y in scored if not y]
    spam = [s for s, y in scored if y]
    return [ActionRates(a, t, sum(s >= t for s in ham), len(ham), sum(s >= t for s in spam),
                        len(spam)) for a, t in thresholds.items()]


def _rule_scores(policy: dict[str, Any]) -> dict[str, float]:
    scores = {r["name"]: float(r["score"]) for r in policy.get("rules", [])}
    scores.update({r["name"]: float(r["score"]) for r in policy.get("metaRules", [])})
    return scores


def fitted_policy(policy: dict[str, Any], scores: dict[str, float], weight: float,
                  thresholds: dict[str, float]) -> dict[str, Any]:
    import copy
    out = copy.deepcopy(policy)
    for key in ("rules", "metaRules"):
        for rule in out.get(key, []):
            if rule["name"] in scores:
                rule["score"] = round(scores[rule["name"]], 2)
    out["thresholds"] = {"tag": thresholds["TAG"], "quarantine": thresholds["QUARANTINE"],
                         "reject": thresholds["REJECT"]}
    model = out.setdefault("model", {})
    model["weight"] = round(weight, 2)
    return out


def compile_policy(policy: dict[str, Any], model: BayesModel | None) -> CompiledPolicy:
    """`policy` served with `model` (or without a model)."""
    import copy
    policy = copy.deepcopy(policy)
    data = model.to_bytes() if model is not None else None
    if data is None:
        policy.pop("model", None)
    else:
        model_spec = {k: v for k, v in policy.get("model", {}).items() if k == "weight"}
        policy["model"] = {"file": "model.json.gz", "weight": 1.0, **model_spec}
    return CompiledPolicy(LoadedPolicy(policy, data, policy_hash(policy, data), "fit"))


def fit(examples: Sequence[Example], policy: dict[str, Any], *,
        params: ModelParams = DEFAULT_PARAMS, targets: dict[str, float] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES, calibration_folds: int = DEFAULT_CALIBRATION_FOLDS,
        progress: Progress | None = None) -> FitResult:
    """Train the model on all examples, fit scores and thresholds (module docstring).
    `calibration_folds` is the served model's (0: it reports raw combined scores, and the
    scores are fitted to those)."""
    progress = progress or _stderr_progress
    targets = {**DEFAULT_TARGET_FPR, **(targets or {})}
    notes: list[str] = []
    spam_n = sum(e.is_spam for e in examples)
    if not spam_n or spam_n == len(examples):
        raise ValueError(f"need at least one ham and one spam message (got "
                         f"{len(examples) - spam_n} ham, {spam_n} spam)")
    held = [e for e in examples if _held_out(e)]
    if min(sum(e.is_spam for e in held), sum(not e.is_spam for e in held)) >= MIN_VALIDATION:
        fit_set = [e for e in examples if not _held_out(e)]
        rates_on = "validation"
    else:
        fit_set, held = list(examples), []
        rates_on = "fit (cross-validated)"
        notes.append(f"fewer than {MIN_VALIDATION} held-out messages of a class: rates are "
                     "cross-validated on the messages the scores were fitted on")
    probabilities = out_of_fold_probabilities(fit_set, params, progress,
                                              calibrate=calibration_folds != 0)
    hand_set = _rule_scores(policy)
    counts: dict[str, int] = {}
    for e in fit_set:
        for name in e.fired:
            counts[name] = counts.get(name, 0) + 1
    signs = {n: (1 if s > 0 else -1) for n, s in hand_set.items()
             if s != 0 and counts.get(n, 0) >= MIN_RULE_MESSAGES}
    kept = sorted(n for n, s in hand_set.items() if s != 0 and n not in signs)
    progress(f"fitting: {len(signs)} rule scores and the model weight on {len(fit_set)} "
             f"messages ({len(kept)} rules fire too rarely and keep their score)")
    # Rules too rare to fit contribute their hand-set score as a fixed offset.
    fixed = {n: hand_set[n] for n in kept}
    fitted, weight = fit_weights([e.fired for e in fit_set],
                                 [2.0 * p - 1.0 for p in probabilities],
                                 [e.is_spam for e in fit_set], signs)
    # A rule the fit held at 0 keeps the smallest score of its sign, so that fitting the
    # fitted policy again still knows its sign (a 0 would make it a helper for good).
    fitted = {n: (max(v, MIN_FITTED_SCORE) if signs[n] > 0 else min(v, -MIN_FITTED_SCORE))
              for n, v in fitted.items()}
    scores = {**{n: s for n, s in hand_set.items() if s == 0}, **fixed, **fitted}
    fit_scores = [(_score(e.fired, p, scores, weight), e.is_spam)
                  for e, p in zip(fit_set, probabilities)]
    thresholds = choose_thresholds([s for s, y in fit_scores if not y], targets, notes,
                                   model_weight=weight)
    if held:
        progress("validation: training on the fit messages to classify the held-out ones")
        model = train_from_tokens([e.tokens for e in fit_set if e.is_spam],
                                  [e.tokens for e in fit_set if not e.is_spam],
                                  params=params, calibration_folds=calibration_folds,
                                  max_bytes=max_bytes, progress=lambda _: None)
        scored = [(_score(e.fired, model.spam_probability(e.tokens), scores, weight),
                   e.is_spam) for e in held]
    else:
        scored = fit_scores
    table = rates(scored, thresholds)
    progress(f"training the model on all {len(examples)} messages")
    final = train_from_tokens([e.tokens for e in examples if e.is_spam],
                              [e.tokens for e in examples if not e.is_spam],
                              params=params, calibration_folds=calibration_folds,
                              max_bytes=max_bytes, progress=progress)
    return FitResult(final, fitted_policy(policy, scores, weight, thresholds), scores, kept,
                     weight, thresholds, table, rates_on, notes)
