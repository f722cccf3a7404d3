"""Score fitting: rule scores and the model weight learnt from labelled messages, and
thresholds placed where each action's target share of ham is reached."""

from __future__ import annotations

import math
import random

import pytest

from filter_server.engine.fitting import (MIN_TAG, UNPROVEN_MARGIN, Example, choose_thresholds,
                                          fit, fit_weights, rates)


def logistic_sample(n: int, weights: dict[str, float], model_weight: float, bias: float,
                    seed: int):
    """Messages whose label is drawn from a known logistic model of the rules that fire
    (each with probability 0.3) and of a model term in [-1, 1]."""
    rng = random.Random(seed)
    fired, terms, labels = [], [], []
    for _ in range(n):
        rules = frozenset(name for name in weights if rng.random() < 0.3)
        term = rng.uniform(-1, 1)
        z = bias + model_weight * term + sum(weights[r] for r in rules)
        labels.append(rng.random() < 1 / (1 + math.exp(-z)))
        fired.append(rules)
        terms.append(term)
    return fired, terms, labels


def test_fitted_weights_recover_the_log_odds_that_made_the_labels():
    truth = {"STRONG": 2.0, "WEAK": 0.7, "HAMMY": -1.5, "USELESS": 0.0}
    fired, terms, labels = logistic_sample(6000, truth, 3.0, -0.4, seed=1)
    signs = {"STRONG": 1, "WEAK": 1, "HAMMY": -1, "USELESS": 1}
    scores, model_weight = fit_weights(fired, terms, labels, signs)
    for name, weight in truth.items():
        assert scores[name] == pytest.approx(weight, abs=0.25), (name, scores)
    assert model_weight == pytest.approx(3.0, abs=0.3)


def test_a_rule_keeps_the_sign_its_author_gave_it():
    # WRONG_WAY is declared a spam sign but fires on ham only: it is held at 0, not flipped
    truth = {"SPAMMY": 1.5, "WRONG_WAY": -2.0}
    fired, terms, labels = logistic_sample(3000, truth, 2.0, 0.0, seed=2)
    scores, _ = fit_weights(fired, terms, labels, {"SPAMMY": 1, "WRONG_WAY": 1})
    assert scores["WRONG_WAY"] == 0.0 and scores["SPAMMY"] > 1.0


def test_thresholds_let_through_at_most_the_target_share_of_ham():
    ham = [i / 100 for i in range(1000)]             # scores 0.00 ... 9.99
    targets = {"TAG": 0.01, "QUARANTINE": 0.005, "REJECT": 0.001}
    notes: list[str] = []
    thresholds = choose_thresholds(ham, targets, notes)
    assert notes == []
    for action, target in targets.items():
        reached = sum(s >= thresholds[action] for s in ham)
        assert reached <= target * len(ham)
        # and not needlessly high: one step lower lets through more than the target
        assert sum(s >= thresholds[action] - 0.02 for s in ham) > reached - 1
    assert thresholds["TAG"] <= thresholds["QUARANTINE"] <= thresholds["REJECT"]
    assert [sum(s >= thresholds[a] for s in ham) for a in targets] == [10, 5, 1]


def test_too_few_ham_for_a_target_puts_the_action_above_every_ham():
    ham = [0.0, 1.0, 2.5]
    notes: list[str] = []
    thresholds = choose_thresholds(ham, {"TAG": 0.5, "QUARANTINE": 0.001, "REJECT": 0.001},
                                   notes)
    assert thresholds["QUARANTINE"] >= 2.5 + UNPROVEN_MARGIN
    assert thresholds["REJECT"] >= thresholds["QUARANTINE"]
    assert any("QUARANTINE" in note and "cannot show" in note for note in notes)
    assert choose_thresholds([-3.0] * 100, {"TAG": 0.01, "QUARANTINE": 0.01, "REJECT": 0.01},
                             [])["TAG"] == MIN_TAG     # no evidence is never tagged


def synthetic_examples(n: int, seed: int) -> list[Example]:
    """Spam say "prize" and "casino" and often fire PRIZE_RULE; ham say "meeting" and
    "agenda"; every message has a unique token."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        spam = i % 2 == 0
        words = (["prize", "casino", "winner"] if spam else ["meeting", "agenda", "lunch"])
        tokens = set(rng.sample(words, 2)) | {f"shared{rng.randrange(20)}", f"id{seed}-{i}"}
        fired = frozenset({"PRIZE_RULE"} if spam and rng.random() < 0.6 else
                          {"NOISE_RULE"} if rng.random() < 0.2 else set())
        out.append(Example(f"m{i}", spam, tokens, fired, f"{rng.getrandbits(64):016x}"))
    return out


def test_fit_end_to_end_reports_validation_rates():
    policy = {"rules": [
        {"name": "PRIZE_RULE", "target": "body", "pattern": "prize", "score": 1.0},
        {"name": "NOISE_RULE", "target": "body", "pattern": "x", "score": 1.0},
        {"name": "RARE_RULE", "target": "body", "pattern": "y", "score": 0.7}],
        "thresholds": {"tag": 5, "quarantine": 10, "reject": 15}}
    result = fit(synthetic_examples(600, 3), policy, progress=lambda line: None)
    assert result.rates_on == "validation"
    assert result.kept == ["RARE_RULE"] and result.scores["RARE_RULE"] == 0.7
    assert result.scores["PRIZE_RULE"] > result.scores["NOISE_RULE"]
    assert result.weight > 0
    by_action = {r.action: r for r in result.rates}
    assert by_action["TAG"].ham_flagged == 0 and by_action["TAG"].spam_caught > 0.9 * \
        by_action["TAG"].spam
    assert result.policy["thresholds"] == {"tag": result.thresholds["TAG"],
                                           "quarantine": result.thresholds["QUARANTINE"],
                                           "reject": result.thresholds["REJECT"]}
    assert [r.action for r in rates([(1.0, True)], result.thresholds)] == \
        ["TAG", "QUARANTINE", "REJECT"]


def test_refitting_a_fitted_policy_keeps_every_rule_fitted():
    """A rule the fit holds at 0 is written with the smallest score of its sign: written as
    0 it would become a helper, never fitted again."""
    policy = {"rules": [
        {"name": "PRIZE_RULE", "target": "body", "pattern": "prize", "score": 1.0},
        {"name": "HAM_RULE_ON_SPAM", "target": "body", "pattern": "x", "score": -1.0}]}
    examples = synthetic_examples(400, 5)
    # HAM_RULE_ON_SPAM has a ham sign but fires on spam only: the fit holds it at 0
    examples = [Example(e.name, e.is_spam, e.tokens,
                        e.fired | ({"HAM_RULE_ON_SPAM"} if e.is_spam and i % 3 == 0 else set()),
                        e.digest) for i, e in enumerate(examples)]
    first = fit(examples, policy, progress=lambda line: None)
    written = {r["name"]: r["score"] for r in first.policy["rules"]}
    assert written["HAM_RULE_ON_SPAM"] == -0.01
    second = fit(examples, first.policy, progress=lambda line: None)
    assert "HAM_RULE_ON_SPAM" in second.scores and second.scores["HAM_RULE_ON_SPAM"] < 0
    assert second.kept == []


def test_thresholds_never_fall_below_the_floors_of_the_model_weight():
    """Fit ham far below every floor: the model alone may tag only when sure (p >= 0.99),
    and QUARANTINE / REJECT need rules worth 1.5 / 3 points on top of a sure model."""
    ham = [-4.0 + i / 1000 for i in range(1000)]
    notes: list[str] = []
    thresholds = choose_thresholds(ham, {"TAG": 0.01, "QUARANTINE": 0.005, "REJECT": 0.001},
                                   notes, model_weight=4.0)
    assert thresholds == {"TAG": pytest.approx(3.93, abs=0.011),
                          "QUARANTINE": pytest.approx(5.5, abs=0.011),
                          "REJECT": pytest.approx(7.0, abs=0.011)}
    assert 4.0 * (2 * 0.99 - 1) <= thresholds["TAG"] < 4.0          # sure model alone: TAG
    assert thresholds["QUARANTINE"] > 4.0 and thresholds["REJECT"] > 4.0  # never alone
    assert sum("raised to its floor" in note for note in notes) == 3
