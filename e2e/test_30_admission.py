"""Bad resources are refused at `kubectl apply`: by the operator's validating webhook (served
with the chart's certificate) with the filter server's own validator messages, and by the
CRDs' CEL rules with the messages written in crds/."""

from __future__ import annotations

import copy
from typing import Any, Iterator

import pytest
import yaml

from e2e.conftest import E2E, example
from e2e.test_10_resources import crd_file
from mailwarden_operator.spampolicy.webhook import admission_errors

pytestmark = pytest.mark.timeout(300)


def invalid_policy() -> dict[str, Any]:
    """The example with mistakes only the validator catches (the CRD schema admits them):
    a pattern the matching engine cannot take and a meta rule naming no rule."""
    doc = copy.deepcopy(example("spampolicy.yaml"))
    doc["metadata"] = {"name": "e2e-invalid"}
    policy = doc["spec"]["policy"]
    policy["rules"].append({"name": "E2E_BACKREF", "target": "body",
                            "pattern": r"(spam)\s+\1", "score": 1.0})
    policy["metaRules"].append({"name": "E2E_UNKNOWN", "expression": "NO_SUCH_RULE && HAS_LIST_ID",
                                "score": 1.0})
    return doc


def cel_messages(crd: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def walk(node: Any) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations") or []:
                yield rule["rule"], rule.get("message", "")
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
    yield from walk(crd)


def message_for(crd: dict[str, Any], rule_part: str) -> str:
    found = [m for rule, m in cel_messages(crd) if rule_part in rule]
    assert len(found) == 1, f"expected one CEL rule containing {rule_part!r}: {found}"
    return found[0]


def test_invalid_policy_is_refused_by_the_webhook_with_the_validator_message(e2e: E2E) -> None:
    doc = invalid_policy()
    expected = admission_errors(doc["spec"], doc["metadata"]["name"])
    assert any("rules[" in e for e in expected) and any("metaRules[" in e for e in expected)
    result = e2e.kube.apply(yaml.safe_dump(doc), check=False)
    print(result.stderr.strip())
    assert result.returncode != 0
    assert "denied the request" in result.stderr  # the webhook, not the schema
    for error in expected:
        assert error in result.stderr, f"missing {error!r} in:\n{result.stderr}"
    assert e2e.kube.get("spampolicy", "e2e-invalid") is None


def test_replicas_min_above_max_is_refused_by_the_cel_rule(e2e: E2E) -> None:
    doc = copy.deepcopy(example("spampolicy.yaml"))
    doc["metadata"] = {"name": "e2e-cel"}
    doc["spec"]["replicas"] = {"min": 5, "max": 2}
    message = message_for(crd_file("spampolicies"), "self.min <= self.max")
    result = e2e.kube.apply(yaml.safe_dump(doc), check=False)
    print(result.stderr.strip())
    assert result.returncode != 0 and message in result.stderr
    assert e2e.kube.get("spampolicy", "e2e-cel") is None


def test_embedded_store_with_two_replicas_is_refused_by_the_cel_rule(e2e: E2E,
                                                                      store_name: str) -> None:
    doc = copy.deepcopy(example("unsubscribestore-dev.yaml"))
    doc["metadata"] = {"name": "e2e-cel-store"}
    doc["spec"]["replicas"] = {"min": 2, "max": 2}
    message = message_for(crd_file("unsubscribestores"), "self.replicas.min == 1")
    result = e2e.kube.apply(yaml.safe_dump(doc), check=False)
    print(result.stderr.strip())
    assert result.returncode != 0 and message in result.stderr
    assert e2e.kube.get("unsubscribestore", "e2e-cel-store") is None
