"""The example SpamPolicies pass the CRD schema and its CEL rules, and their policies pass
the filter server's validator; broken variants are refused with the rules' messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from filter_server.policy.validate import validate_policy
from mailwarden_operator import crd
from mailwarden_operator.webhook import admission_errors
from tests.operator.crd_validation import validate_custom_resource

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted(path: Path) -> None:
    policies = [d for d in _docs(path) if d.get("kind") == "SpamPolicy"]
    assert policies, f"{path.name} holds no SpamPolicy"
    for doc in policies:
        assert validate_custom_resource(doc, crd.spampolicy_crd()) == []
        assert validate_policy(doc["spec"]["policy"]) == []
        assert admission_errors(doc["spec"], doc["metadata"]["name"]) == []


def _example() -> dict:
    return copy.deepcopy(_docs(REPO / "examples" / "spampolicy.yaml")[0])


@pytest.mark.parametrize("change, message", [
    (lambda d: d["spec"].update(replicas={"min": 5, "max": 2}),
     "replicas.min must not exceed replicas.max"),
    (lambda d: d["spec"]["policy"].update(thresholds={"tag": 9, "quarantine": 3,
                                                      "reject": 20}),
     "thresholds must satisfy tag <= quarantine <= reject"),
    (lambda d: d["spec"]["policy"]["rules"][0].pop("header"),
     "rules with target 'header' must name the header"),
    (lambda d: d["spec"]["policy"]["rules"][4].update(header="Subject"),
     "only rules with target 'header' take a header name"),
    (lambda d: d["spec"]["policy"]["model"].update(file="model.bin"),
     "model takes either file or configMapRef, not both"),
    (lambda d: d["spec"].update(disruption={"maxUnavailable": "150%"}),
     "must be a non-negative integer or a percentage"),
    (lambda d: d["metadata"].update(name="n" * 60),
     "SpamPolicy names are at most 47 characters"),
], ids=["replicas", "thresholds", "header-missing", "header-extra", "model-both",
        "percentage", "name-length"])
def test_cel_rules_refuse_broken_resources(change, message) -> None:
    doc = _example()
    change(doc)
    errors = validate_custom_resource(doc, crd.spampolicy_crd())
    assert any(message in e for e in errors), errors


def test_schema_refuses_unknown_fields_and_wrong_types() -> None:
    doc = _example()
    doc["spec"]["replicas"]["minimum"] = 3
    doc["spec"]["policy"]["rules"][0]["score"] = "high"
    errors = validate_custom_resource(doc, crd.spampolicy_crd())
    assert any("minimum" in e for e in errors)
    assert any("'high' is not of type 'number'" in e for e in errors)


def test_the_crd_defaults_fill_the_serving_fields() -> None:
    from mailwarden_operator.spec import with_defaults
    spec = with_defaults({"policy": {}})
    assert spec["replicas"] == {"min": 2, "max": 10}
    assert spec["disruption"] == {"maxUnavailable": 1}
    assert spec["server"]["drainSeconds"] == 10
    assert spec["policy"]["thresholds"] == {"tag": 5.0, "quarantine": 10.0, "reject": 20.0}
