"""What the webhook judges (issue 13 item 14) and how often it compiles a policy (item 10)."""

from __future__ import annotations

import pytest

from mailwarden_operator.spampolicy import webhook

SPEC = {"policy": {"rules": [{"name": "R1", "target": "body", "pattern": "x", "score": 1}]}}


@pytest.mark.parametrize("operation, old, new, judged", [
    ("CREATE", None, {"spec": SPEC}, True),
    ("UPDATE", {"spec": SPEC}, {"spec": {**SPEC, "replicas": {"min": 3}}}, True),
    # Labels, annotations, kopf's bookkeeping: the spec is as it was.
    ("UPDATE", {"spec": SPEC, "metadata": {}}, {"spec": SPEC, "metadata": {"labels": {}}},
     False),
    # The garbage collector removing the foregroundDeletion finalizer.
    ("UPDATE", {"spec": SPEC}, {"spec": {"policy": {}},
                                "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}},
     False),
])
def test_only_spec_changes_of_live_objects_are_judged(operation, old, new, judged) -> None:
    assert webhook.needs_review(operation, old, new) is judged


def test_a_verdict_is_computed_once_per_content(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = webhook.validate_policy

    def counting(policy):
        calls.append(1)
        return real(policy)
    monkeypatch.setattr(webhook, "validate_policy", counting)
    webhook._cached_errors.cache_clear()
    spec = {"policy": {"rules": [{"name": "R2", "target": "body", "pattern": "(", "score": 1}]}}
    first = webhook.admission_errors(spec, "mail")
    assert first and webhook.admission_errors(dict(spec), "mail") == first
    assert len(calls) == 1
    webhook.admission_errors(spec, "other")  # the name is part of the verdict
    assert len(calls) == 2
