"""The golden-corpus check (issue 18): which verdicts violate a set's bound, and whether the
report names the messages and the rules responsible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from filter_server.engine.compiled import CompiledPolicy
from filter_server.engine.golden import (
    MAX_MESSAGES,
    GoldenCorpusInvalid,
    GoldenSet,
    check_corpus,
    corpus_digest,
    messages_in,
)
from filter_server.policy.loader import LoadedPolicy, policy_hash
from filter_server.policy.validate import apply_defaults, validate_policy

HAM = b"From: alice@example.org\r\nSubject: minutes\r\n\r\nThe meeting minutes are attached.\r\n"
SPAM = b"From: x@spam.test\r\nSubject: offer\r\n\r\nCheap viagra, buy now!\r\n"


def compiled(*rules: dict[str, Any]) -> CompiledPolicy:
    policy = {"rules": list(rules)}
    assert validate_policy(policy) == []
    policy = apply_defaults(policy)
    return CompiledPolicy(LoadedPolicy(policy, None, policy_hash(policy, None), "test"))


def rule(name: str, pattern: str, score: float) -> dict[str, Any]:
    return {"name": name, "target": "body", "pattern": pattern, "score": score}


GOOD = compiled(rule("VIAGRA", "viagra", 12))
SETS = [GoldenSet("corpus/ham", "ham", messages=(("minutes.eml", HAM),)),
        GoldenSet("corpus/spam", "spam", messages=(("offer.eml", SPAM),))]


def test_a_good_policy_passes() -> None:
    report = check_corpus(GOOD, SETS)
    assert report.passed and report.checked == 2 and report.by_label == {"ham": 1, "spam": 1}


def test_ham_quarantined_is_named_with_the_rules_that_scored_it() -> None:
    bad = compiled(rule("VIAGRA", "viagra", 12), rule("MEETING", "meeting", 11),
                   rule("MINUTES", "minutes", 0.5))
    report = check_corpus(bad, SETS)
    assert [(v.message, v.action) for v in report.violations] == [("minutes.eml", "QUARANTINE")]
    text = str(report.violations[0])
    assert "golden ham corpus/ham/minutes.eml would be QUARANTINE" in text
    assert "expected at most TAG" in text
    # The largest contribution first.
    assert text.index("MEETING +11") < text.index("MINUTES +0.5")


def test_spam_below_tag_names_what_lowered_it_and_what_stopped_firing() -> None:
    weakened = compiled(rule("VIAGRA", "viagra", 2), rule("BUY_NOW", "buy now", -1))
    report = check_corpus(weakened, SETS, baseline=GOOD)
    assert len(report.violations) == 1
    text = str(report.violations[0])
    assert "golden spam corpus/spam/offer.eml would be ACCEPT" in text
    assert "rules: BUY_NOW -1" in text
    # VIAGRA still fires (with a lower score): only rules gone entirely are "no longer firing".
    assert "no longer firing" not in text
    removed = compiled(rule("OTHER", "unrelated", 1))
    text = str(check_corpus(removed, SETS, baseline=GOOD).violations[0])
    assert "no rule scores it" in text and "no longer firing: VIAGRA +12" in text


@pytest.mark.parametrize("label,bound,action,ok", [
    ("ham", "TAG", "TAG", True), ("ham", "ACCEPT", "TAG", False),
    ("ham", "TAG", "QUARANTINE", False), ("spam", "TAG", "ACCEPT", False),
    ("spam", "REJECT", "QUARANTINE", False), ("spam", "QUARANTINE", "REJECT", True)])
def test_bounds(label: str, bound: str, action: str, ok: bool) -> None:
    assert GoldenSet("s", label, bound).acceptable(action) is ok


def test_a_stricter_spam_bound_is_enforced() -> None:
    strict = [GoldenSet("corpus/spam", "spam", "REJECT", (("offer.eml", SPAM),))]
    violations = check_corpus(GOOD, strict).violations
    assert [v.action for v in violations] == ["QUARANTINE"]
    assert "expected at least REJECT" in str(violations[0])


def test_bad_sets_are_refused_with_a_reason() -> None:
    with pytest.raises(GoldenCorpusInvalid, match="label must be ham or spam"):
        GoldenSet("s", "eggs")
    with pytest.raises(GoldenCorpusInvalid, match="bound must be one of ACCEPT, TAG"):
        GoldenSet("s", "ham", "REJECT")
    many = [GoldenSet("s", "ham", messages=tuple((str(i), HAM)
                                                  for i in range(MAX_MESSAGES + 1)))]
    with pytest.raises(GoldenCorpusInvalid, match="at most 2000"):
        check_corpus(GOOD, many)


def test_digest_follows_content_and_directories_read_as_sets(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(HAM)
    (tmp_path / ".hidden").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert messages_in(tmp_path) == (("a.eml", HAM),)
    other = [GoldenSet("corpus/ham", "ham", messages=(("minutes.eml", HAM + b"x"),)), SETS[1]]
    assert corpus_digest(SETS) == corpus_digest(list(SETS)) != corpus_digest(other)
