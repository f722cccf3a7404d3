"""The CRD's single-object rules repeated in Python (for a server that skipped them, and
for the webhook's message): names that Services cannot take, pod counts of zero."""

from __future__ import annotations

import pytest

from mailwarden_operator.spampolicy.spec import serving_errors, with_defaults
from mailwarden_operator.spampolicy.webhook import admission_errors
from mailwarden_operator.unsubscribestore.spec import spec_errors
from mailwarden_operator.unsubscribestore.spec import with_defaults as store_defaults


@pytest.mark.parametrize("name", ["mail.inbound", "1st", "Inbound", "inbound-", "a" * 48])
def test_names_services_cannot_take_are_refused(name: str) -> None:
    assert any(e.startswith("metadata.name") for e in serving_errors(with_defaults({}), name))
    store = store_defaults({"storage": {"type": "embedded"}, "replicas": {"min": 1, "max": 1}})
    assert any(e.startswith("metadata.name") for e in spec_errors(store, name))


@pytest.mark.parametrize("name", ["inbound", "a", "mail-in-2", "a" * 47])
def test_dns_1035_names_pass(name: str) -> None:
    assert serving_errors(with_defaults({}), name) == []


@pytest.mark.parametrize("field, value", [("rollout", {"maxSurge": 0}),
                                          ("rollout", {"maxSurge": "0%"}),
                                          ("disruption", {"maxUnavailable": 0}),
                                          ("disruption", {"maxUnavailable": "0%"})])
def test_zero_pod_counts_are_refused(field: str, value: dict) -> None:
    errors = admission_errors({"policy": {"rules": []}, field: value}, "inbound")
    assert any("must be at least 1 or a percentage from 1% to 100%" in e for e in errors)


@pytest.mark.parametrize("value", [1, 3, "1%", "25%", "100%"])
def test_positive_pod_counts_pass(value: object) -> None:
    assert admission_errors({"policy": {"rules": []}, "rollout": {"maxSurge": value},
                             "disruption": {"maxUnavailable": value}}, "inbound") == []


def test_protocols_default_to_grpc_and_must_keep_it() -> None:
    assert with_defaults({})["protocols"] == ["grpc"]
    assert serving_errors(with_defaults({"protocols": ["grpc", "milter"]}), "inbound") == []
    errors = admission_errors({"policy": {"rules": []}, "protocols": ["milter"]}, "inbound")
    assert "spec.protocols must include grpc (the probes and clients use it)" in errors
