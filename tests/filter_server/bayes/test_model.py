"""The model's arithmetic, its calibration, and its file format."""

from __future__ import annotations

import gzip
import json
import math

import pytest

from filter_server.bayes.calibrate import Calibration, fit_isotonic
from filter_server.bayes.model import (FORMAT, BayesModel, ModelError, ModelParams, chi2q,
                                       token_probability)
from filter_server.bayes.tokenize import TOKENIZER_VERSION


def test_token_probability_is_robinsons_f():
    # seen in 10 of 100 spam and 1 of 100 ham: p = 0.1 / 0.11; pulled towards 1/2 by S
    p = 0.1 / 0.11
    assert token_probability(10, 1, 100, 100, 0.2) == pytest.approx((0.1 + 11 * p) / 11.2)
    # class sizes are normalised away: the same share in both classes is neutral
    assert token_probability(10, 30, 100, 300, 0.2) == pytest.approx(0.5)
    assert token_probability(0, 0, 100, 100) == 0.5
    # a token seen twice, only in spam, is decisive; seen once it is not (S = 0.2)
    assert token_probability(2, 0, 100, 100, 0.2) == pytest.approx(2.1 / 2.2)
    assert token_probability(1, 0, 100, 100, 0.2) == pytest.approx(1.1 / 1.2)


def test_chi2q_matches_the_closed_form():
    for x2 in (0.0, 1.0, 5.0, 40.0):
        assert chi2q(x2, 2) == pytest.approx(math.exp(-x2 / 2))
        assert chi2q(x2, 4) == pytest.approx(math.exp(-x2 / 2) * (1 + x2 / 2))
    assert chi2q(1e6, 10) == 0.0


def model(**kw) -> BayesModel:
    counts = {"viagra": (40, 0), "meeting": (0, 40), "hello": (20, 20), "rare": (1, 0)}
    return BayesModel(nspam=50, nham=50, counts=counts, **kw)


def test_only_decisive_tokens_are_clues():
    m = model()
    assert {t for _, t in m.clues({"viagra", "meeting", "hello", "rare"})} == \
        {"viagra", "meeting"}
    assert m.can_be_clue(40, 0) and not m.can_be_clue(20, 20) and not m.can_be_clue(1, 0)
    assert len(m) == 2


def test_rare_tokens_are_no_clue_and_few_sightings_weigh_less():
    # seen in two spam: below the default minimum count of 3, whatever its probability
    m = BayesModel(100, 100, {"twice": (2, 0), "thrice": (3, 0), "often": (30, 0)})
    assert m.params.min_count == 3
    assert {t for _, t in m.clues({"twice", "thrice", "often"})} == {"thrice", "often"}
    probs = dict((t, f) for f, t in m.clues({"thrice", "often"}))
    assert 0.5 < probs["thrice"] < probs["often"] < 1.0   # the prior pulls rare ones in
    assert not m.can_be_clue(2, 0) and m.can_be_clue(3, 0)
    with pytest.raises(ValueError):
        BayesModel(1, 1, {}, params=ModelParams(min_count=0))


def test_clues_both_ways_are_reported_unsure():
    m = model()
    assert m.explain({"viagra", "meeting"})[1] == "unsure"
    assert m.explain({"viagra"})[1] == "sure" and m.explain({"meeting"})[1] == "sure"
    assert m.explain({"unknown"}) == (0.5, "no evidence")


def test_max_clues_keeps_the_most_extreme():
    counts = {f"s{i}": (i + 2, 0) for i in range(10)}
    m = BayesModel(100, 100, counts, params=ModelParams(max_clues=3))
    clues = m.clues(counts)
    assert [t for _, t in clues] == ["s9", "s8", "s7"]


def test_scores_lean_the_right_way_and_unknown_means_no_evidence():
    m = model()
    assert m.spam_probability({"viagra", "hello"}) > 0.99
    assert m.spam_probability({"meeting", "hello"}) < 0.01
    assert m.spam_probability({"viagra", "meeting"}) == pytest.approx(0.5)
    assert m.raw_score({"hello", "unknown"}) is None
    assert m.spam_probability({"hello", "unknown"}) == 0.5


def test_calibration_maps_raw_scores_but_not_missing_evidence():
    cal = Calibration([(0.0, 0.01), (0.5, 0.3), (1.0, 0.9)])
    m = model(calibration=cal)
    raw = m.raw_score({"viagra"})
    assert m.spam_probability({"viagra"}) == pytest.approx(cal(raw))
    assert m.spam_probability({"unknown"}) == 0.5


def test_params_are_checked():
    for bad in (dict(prior_strength=0), dict(min_strength=0.5), dict(max_clues=0)):
        with pytest.raises(ValueError):
            model(params=ModelParams(**bad))


def test_round_trip_keeps_scores_and_bytes_are_deterministic():
    m = model(calibration=Calibration([(0.0, 0.02), (0.4, 0.2), (0.5, 0.7), (1.0, 0.99)]),
              params=ModelParams(0.3, 0.4, 20), trained={"ham_messages": 50})
    data = m.to_bytes()
    assert data == m.to_bytes()
    back = BayesModel.from_bytes(data)
    assert back.params == m.params and back.trained == m.trained
    assert back.calibration.knots == m.calibration.knots
    for tokens in ({"viagra"}, {"meeting"}, {"viagra", "meeting", "hello"}):
        assert back.spam_probability(tokens) == m.spam_probability(tokens)
    doc = json.loads(gzip.decompress(data))
    assert doc["format"] == FORMAT and doc["tokenizer"] == TOKENIZER_VERSION


def _gz(doc) -> bytes:
    return gzip.compress(json.dumps(doc).encode())


@pytest.mark.parametrize("data,message", [
    (b"not gzip at all", "not a gzip-compressed JSON model"),
    (gzip.compress(b"{not json"), "not a gzip-compressed JSON model"),
    (_gz([1, 2]), 'no "format" field'),
    (_gz({"tokens": {}}), 'no "format" field'),
    (_gz({"format": "mailwarden-bayes/1", "nspam": 1, "nham": 1, "tokens": {}}),
     "model format mailwarden-bayes/1 is not supported by this version"),
    (_gz({"format": "something-else"}), "not a Mailwarden model (format 'something-else'"),
    (_gz({"format": FORMAT, "tokenizer": "mailwarden-tokens/1"}),
     "trained with tokenizer 'mailwarden-tokens/1'"),
    (_gz({"format": FORMAT, "tokenizer": TOKENIZER_VERSION, "nspam": 1}), "malformed model"),
    (_gz({"format": FORMAT, "tokenizer": TOKENIZER_VERSION, "nspam": 1, "nham": 1,
          "params": {"prior_strength": 0.2, "min_strength": 0.44, "max_clues": 10},
          "calibration": [[0.5, 0.9], [0.4, 0.1]], "tokens": {}}), "malformed model"),
    (_gz({"format": FORMAT, "tokenizer": TOKENIZER_VERSION, "nspam": 1, "nham": 1,
          "params": {"prior_strength": 0.2, "min_strength": 0.44, "max_clues": 10},
          "calibration": None, "tokens": {"x": "oops"}}), "malformed model"),
])
def test_wrong_files_get_clear_errors(data, message):
    with pytest.raises(ModelError) as err:
        BayesModel.from_bytes(data)
    assert message in str(err.value)
    if "format mailwarden-bayes/1" in message:
        assert "retrain" in str(err.value)


def test_isotonic_fit_is_monotone_and_follows_the_data():
    # raw score 0.1: 1 spam in 10; 0.5: 5 in 10; 0.9: 9 in 10 -> one knot each
    raw = [0.1] * 10 + [0.5] * 10 + [0.9] * 10
    spam = [i < 1 for i in range(10)] + [i < 5 for i in range(10)] + [i < 9 for i in range(10)]
    cal = fit_isotonic(raw, spam)
    assert cal(0.1) == pytest.approx(1.5 / 11)      # smoothed by one pseudo-message
    assert cal(0.5) == pytest.approx(5.5 / 11)
    assert cal(0.9) == pytest.approx(9.5 / 11)
    assert cal(0.3) == pytest.approx((cal(0.1) + cal(0.5)) / 2)   # linear between knots
    assert cal(0.0) == pytest.approx(cal(0.1)) and cal(1.0) == pytest.approx(cal(0.9))


def test_isotonic_pools_violators():
    cal = fit_isotonic([0.1, 0.2, 0.3, 0.4], [False, True, False, True])
    ys = [cal(x) for x in (0.1, 0.2, 0.3, 0.4)]
    assert ys == sorted(ys)
    assert cal(0.25) == pytest.approx(1.5 / 3)   # 0.2 and 0.3 pooled: one knot at 0.25
    assert len(cal.knots) == 3


def test_min_block_stops_a_few_messages_from_placing_a_knot():
    raw = [i / 100 for i in range(100)]
    spam = [i >= 50 for i in range(100)]
    spam[10] = True   # one stray spam among the ham
    fine = fit_isotonic(raw, spam)
    coarse = fit_isotonic(raw, spam, min_block=25)
    assert len(coarse.knots) < len(fine.knots)
    assert all(b[1] >= a[1] for a, b in zip(coarse.knots, coarse.knots[1:]))


def test_calibration_rejects_bad_knots():
    for knots in ([], [(0.5, 0.9), (0.4, 0.95)], [(0.1, 0.9), (0.2, 0.1)], [(0.5, 1.5)]):
        with pytest.raises(ValueError):
            Calibration(knots)
    with pytest.raises(ValueError):
        fit_isotonic([], [])
