"""Pattern compilation: validation compiles each target group once, the compiled policy
reuses those databases (a policy's start-up compiles its patterns once, not twice), and a
broken pattern among many valid ones is still named by its own path."""

from __future__ import annotations

import pytest

from filter_server import patterns
from filter_server.engine.compiled import CompiledPolicy, Envelope
from filter_server.policy.loader import LoadedPolicy, policy_hash
from filter_server.policy.validate import apply_defaults, validate_policy


def _policy(rules: list[dict]) -> dict:
    return {"thresholds": {"tag": 1, "quarantine": 5, "reject": 10}, "rules": rules}


def _rules(n: int, prefix: str = "R") -> list[dict]:
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append({"name": f"{prefix}{i}", "target": "body", "pattern": rf"\bword{i}\b",
                        "score": 1})
        elif kind == 1:
            out.append({"name": f"{prefix}{i}", "target": "header", "header": "Subject",
                        "pattern": rf"(?i)subj{i}", "score": 1})
        elif kind == 2:
            out.append({"name": f"{prefix}{i}", "target": "uri", "pattern": rf"host{i}\.",
                        "score": 1})
        else:
            out.append({"name": f"{prefix}{i}", "target": "header", "header": f"X-H{i % 3}",
                        "pattern": rf"^v{i}$", "score": 1})
    return out


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every engine compile as (number of patterns, flags), from a cold cache: in this
    process, or in the child process validation compiles in (one entry per job)."""
    seen: list[tuple[int, int]] = []
    real = patterns._compile
    real_in_child = patterns.compile_in_child
    monkeypatch.setattr(patterns, "_kept", type(patterns._kept)())

    def counting(expressions, flags):
        seen.append((len(expressions), flags))
        return real(expressions, flags)

    def counting_in_child(jobs, timeout):
        seen.extend((len(expressions), flags) for flags, expressions in jobs)
        return real_in_child(jobs, timeout)

    monkeypatch.setattr(patterns, "_compile", counting)
    monkeypatch.setattr(patterns, "compile_in_child", counting_in_child)
    return seen


def test_validation_then_compilation_compiles_each_group_once(compiles) -> None:
    policy = _policy(_rules(40))
    assert validate_policy(policy) == []
    groups = {patterns.target_key(r) for r in policy["rules"]}
    assert len(compiles) == len(groups)  # one compile per group, not one per pattern
    loaded = apply_defaults(policy)
    compiled = CompiledPolicy(LoadedPolicy(loaded, None, policy_hash(loaded, None), "t"))
    assert len(compiles) == len(groups)  # the compiled policy reused every database
    verdict = compiled.classify(b"Subject: subj1\r\nX-H0: v3\r\n\r\nsee word0 at "
                                b"http://host2.example/\r\n", Envelope())
    assert [h.name for h in verdict.hits] == ["R0", "R1", "R2", "R3"]


def test_body_group_is_checked_with_the_flags_it_is_served_with(compiles) -> None:
    assert validate_policy(_policy(_rules(8))) == []
    by_flags = {flags for _, flags in compiles}
    assert by_flags == {patterns.BASE_FLAGS, patterns.LINE_FLAGS}


def test_a_bad_pattern_among_many_is_named_by_its_path(compiles) -> None:
    rules = _rules(30)
    rules[17]["pattern"] = r"(a)\1"          # a uri rule
    rules[20]["pattern"] = "a*"               # a body rule
    rules[21]["pattern"] = "ok\x00"           # NUL: refused before the engine sees it
    errors = validate_policy(_policy(rules))
    reasons = {e.path: e.reason for e in errors}
    assert set(reasons) == {"rules[17].pattern", "rules[20].pattern", "rules[21].pattern"}
    assert "Back-references are unsupported" in reasons["rules[17].pattern"]
    assert reasons["rules[20].pattern"] == ("matches the empty string, so it would fire on "
                                            "every message")
    assert reasons["rules[21].pattern"] == "must not contain NUL characters"
    # groups without a bad pattern compiled once; the two broken groups once more per rule
    groups = {patterns.target_key(r) for r in rules}
    uri_and_body = sum(1 for r in rules if r["target"] in ("uri", "body")
                       and "\x00" not in r["pattern"])
    assert len(compiles) == len(groups) + uri_and_body


def test_a_reload_recompiles_only_the_groups_that_changed(compiles) -> None:
    policy = _policy(_rules(40))
    assert validate_policy(policy) == []
    before = len(compiles)
    policy["rules"][1]["pattern"] = "(?i)changed subject"   # the Subject group changes
    assert validate_policy(policy) == []
    assert compiles[before:] == [(10, patterns.LINE_FLAGS)]
