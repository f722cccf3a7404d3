"""The policy validator: every error path reports its location and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from filter_server.policy.validate import (PolicyInvalid, apply_defaults, load_policy_file,
                                           parse_policy_text, validate_policy)

REPO = Path(__file__).resolve().parents[3]


def rule(**overrides):
    base = {"name": "R1", "target": "body", "pattern": "viagra", "score": 1.0}
    base.update(overrides)
    return base


def errors_of(policy, **kw):
    return [(e.path, e.reason) for e in validate_policy(policy, **kw)]


def test_minimal_policy_is_valid_and_defaults_are_filled():
    assert errors_of({}) == []
    policy = apply_defaults({})
    assert policy["thresholds"] == {"tag": 5.0, "quarantine": 10.0, "reject": 20.0}
    assert policy["lists"]["allow"]["score"] == -100.0
    assert policy["lists"]["block"]["score"] == 100.0
    assert policy["signatures"] == {"digests": [], "score": 20.0}
    assert policy["limits"]["maxScanBytes"] == 262144


def test_example_policy_is_valid():
    from filter_server.policy.validate import unwrap_policy
    import yaml
    doc = yaml.safe_load((REPO / "examples" / "spampolicy.yaml").read_text())
    assert errors_of(unwrap_policy(doc)) == []


def test_not_a_mapping():
    assert errors_of(["a"]) == [("", "a policy must be a mapping, not list")]


def test_unknown_fields_are_reported_with_their_path():
    errs = errors_of({"rules": [rule(scroe=2)], "thresold": {}})
    assert ("rules[0].scroe", "unknown field") in errs
    assert ("thresold", "unknown field") in errs


def test_missing_required_field():
    errs = errors_of({"rules": [{"name": "R1", "target": "body", "score": 1}]})
    assert errs == [("rules[0]", "'pattern' is a required property")]


def test_wrong_type_and_enum():
    errs = errors_of({"rules": [rule(score="high", target="envelope")]})
    assert ("rules[0].score", "'high' is not of type 'number'") in errs
    assert any(p == "rules[0].target" and "is not one of" in r for p, r in errs)


def test_bad_rule_name():
    errs = errors_of({"rules": [rule(name="1bad-name")]})
    assert errs == [("rules[0].name", "must start with a letter and hold only letters, "
                     "digits and underscores (at most 64)")]


def test_duplicate_and_builtin_names():
    errs = errors_of({"rules": [rule(), rule(), rule(name="BAYES")]})
    assert ("rules[1].name", "duplicate rule name 'R1' (first defined at rules[0])") in errs
    assert ("rules[2].name", "is a built-in rule name") in errs


def test_header_rules_need_a_header_and_others_must_not_have_one():
    errs = errors_of({"rules": [rule(target="header"), rule(name="R2", header="Subject")]})
    assert ("rules[0].header", "required when target is 'header'") in errs
    assert ("rules[1].header",
            "only rules with target 'header' take a header (target is 'body')") in errs


def test_unsupported_patterns_are_rejected_at_validation():
    errs = errors_of({"rules": [rule(pattern=r"(a)\1"), rule(name="R2", pattern="a(?=b)"),
                                rule(name="R3", pattern="a*"), rule(name="R4", pattern="(")]})
    reasons = dict(errs)
    assert "Back-references are unsupported" in reasons["rules[0].pattern"]
    assert "Zero-width assertions are not supported" in reasons["rules[1].pattern"]
    assert reasons["rules[2].pattern"] == ("matches the empty string, so it would fire on "
                                           "every message")
    assert reasons["rules[3].pattern"].startswith("not supported by the matching engine")


def test_threshold_order():
    errs = errors_of({"thresholds": {"tag": 10, "quarantine": 5}})
    assert errs == [("thresholds",
                     "must satisfy tag <= quarantine <= reject (got 10, 5, 20.0)")]


def test_meta_rule_errors():
    policy = {
        "rules": [rule()],
        "metaRules": [
            {"name": "M1", "expression": "R1 && NOPE", "score": 1},
            {"name": "M2", "expression": "R1 &&", "score": 1},
            {"name": "M3", "expression": "M4 || R1", "score": 1},
            {"name": "M4", "expression": "!M3", "score": 1},
        ],
    }
    errs = errors_of(policy)
    assert ("metaRules[0].expression", "refers to unknown rule 'NOPE'") in errs
    assert ("metaRules[1].expression",
            "expected a rule name, found 'end of expression' at character 6") in errs
    assert ("metaRules[2].expression", "meta rules form a cycle: M3 -> M4 -> M3") in errs


def test_meta_rule_nested_too_deeply_is_an_error_not_a_crash():
    expression = "(" * 1500 + "R1" + ")" * 1500
    errs = errors_of({"rules": [rule()],
                      "metaRules": [{"name": "M", "expression": expression, "score": 1}]})
    assert errs == [("metaRules[0].expression", "nested too deeply")]


def test_list_entries_are_checked():
    errs = errors_of({"lists": {"allow": {"domains": ["exa mple.com"]},
                                "block": {"uriHosts": ["-bad.example"]}}})
    assert ("lists.allow.domains[0]", "'exa mple.com' is not a valid host or domain name") \
        in errs
    assert ("lists.block.uriHosts[0]", "'-bad.example' is not a valid host or domain name") \
        in errs


def test_signature_digest_format():
    errs = errors_of({"signatures": {"digests": ["md5:abc"]}})
    assert errs == [("signatures.digests[0]",
                     "must be 'sha256:' followed by 64 lowercase hex digits")]


def test_model_source_rules(tmp_path):
    assert ("model", "needs either file or configMapRef") in errors_of({"model": {}})
    both = {"model": {"file": "m.gz", "configMapRef": {"name": "x"}}}
    assert ("model", "takes either file or configMapRef, not both") in errors_of(both)
    errs = errors_of({"model": {"file": "m.gz"}}, base_dir=tmp_path)
    assert errs == [("model.file", f"'m.gz' not found in {tmp_path}")]


def test_yaml_syntax_error_is_located():
    with pytest.raises(PolicyInvalid) as info:
        parse_policy_text("rules:\n  - name: [unclosed\n", "p.yaml")
    assert "p.yaml: line 3, column 1: not valid YAML" in str(info.value)


def test_spampolicy_resource_is_unwrapped(tmp_path):
    path = tmp_path / "sp.yaml"
    path.write_text("kind: SpamPolicy\nspec:\n  policy:\n    rules:\n"
                    "      - {name: X, target: body, pattern: 'x+y', score: 2}\n")
    assert load_policy_file(path)["rules"][0]["name"] == "X"


def test_cli_prints_every_error_and_exits_nonzero(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rules:\n  - {name: A, target: body, pattern: '(a)\\1', score: 1}\n"
                    "  - {name: A, target: header, pattern: x, score: 1}\n")
    result = subprocess.run([sys.executable, "-m", "mailwarden.cli", "policy", "validate",
                             str(path)], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any("rules[0].pattern: not supported by the matching engine" in l for l in lines)
    assert any("rules[1].name: duplicate rule name 'A'" in l for l in lines)
    assert any("rules[1].header: required when target is 'header'" in l for l in lines)
    assert "Traceback" not in result.stderr


def test_cli_accepts_valid_file():
    result = subprocess.run([sys.executable, "-m", "mailwarden.cli", "policy", "validate",
                             str(REPO / "examples" / "spampolicy.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "valid (" in result.stdout


def test_cli_unreadable_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mailwarden.cli", "policy", "validate",
                             str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr
