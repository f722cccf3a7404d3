"""The example SpamPolicies and UnsubscribeStores pass their CRD's schema and CEL rules (and
the operator's own checks), the policies pass the filter server's validator, and any other
object in an example file is valid Kubernetes; broken variants are refused with the rules'
messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from filter_server.policy.validate import validate_policy
from mailwarden_operator.spampolicy import crd
from mailwarden_operator.unsubscribestore import spec as store_spec
from mailwarden_operator.unsubscribestore.crd import unsubscribestore_crd
from mailwarden_operator.spampolicy.webhook import admission_errors
from tests.operator.crd_validation import validate_custom_resource
from tests.operator.k8s_schemas import validate_k8s

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
CRDS = {"SpamPolicy": crd.spampolicy_crd(), "UnsubscribeStore": unsubscribestore_crd()}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted(path: Path) -> None:
    docs = _docs(path)
    assert any(d.get("kind") in CRDS for d in docs), f"{path.name} holds no custom resource"
    for doc in docs:
        if doc["kind"] not in CRDS:
            validate_k8s(doc)
            continue
        assert validate_custom_resource(doc, CRDS[doc["kind"]]) == []
        if doc["kind"] == "SpamPolicy":
            assert validate_policy(doc["spec"]["policy"]) == []
            assert admission_errors(doc["spec"], doc["metadata"]["name"]) == []
        else:
            assert store_spec.spec_errors(store_spec.with_defaults(doc["spec"]),
                                          doc["metadata"]["name"]) == []


def test_the_production_policy_uses_the_example_store() -> None:
    policy = next(d for d in _docs(REPO / "examples" / "spampolicy-production.yaml")
                  if d["kind"] == "SpamPolicy")
    store = next(d for d in _docs(REPO / "examples" / "unsubscribestore.yaml")
                 if d["kind"] == "UnsubscribeStore")
    assert policy["spec"]["unsubscribeStoreRef"]["name"] == store["metadata"]["name"]
    assert policy["metadata"]["namespace"] == store["metadata"]["namespace"]


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
     "disruption.maxUnavailable must be at least 1 or a percentage from 1% to 100%"),
    (lambda d: d["metadata"].update(name="n" * 60),
     "SpamPolicy names are at most 47 characters"),
    # Issue 13 item 5: valid object names the Services named after them cannot take.
    (lambda d: d["metadata"].update(name="mail.inbound"),
     "SpamPolicy names must be DNS-1035 labels"),
    (lambda d: d["metadata"].update(name="1st"), "SpamPolicy names must be DNS-1035 labels"),
    # Issue 13 item 6: a Deployment the API server refuses, a PDB that blocks every drain.
    (lambda d: d["spec"].update(rollout={"maxSurge": 0}),
     "rollout.maxSurge must be at least 1 or a percentage from 1% to 100%"),
    (lambda d: d["spec"].update(rollout={"maxSurge": "0%"}),
     "rollout.maxSurge must be at least 1 or a percentage from 1% to 100%"),
    (lambda d: d["spec"].update(disruption={"maxUnavailable": 0}),
     "disruption.maxUnavailable must be at least 1 or a percentage from 1% to 100%"),
    (lambda d: d["spec"].update(disruption={"maxUnavailable": "0%"}),
     "disruption.maxUnavailable must be at least 1 or a percentage from 1% to 100%"),
    (lambda d: d["spec"].update(server={"preStopSeconds": 0}),
     "0 is less than the minimum of 1"),
    # Issue 13 item 16: no CPU request, no CPU utilization: the HPA stops scaling.
    (lambda d: d["spec"].update(resources={"requests": {"memory": "1Gi"}}),
     "resources must request cpu"),
], ids=["replicas", "thresholds", "header-missing", "header-extra", "model-both",
        "percentage", "name-length", "dotted-name", "digit-name", "surge-0", "surge-0%",
        "unavailable-0", "unavailable-0%", "prestop-0", "no-cpu-request"])
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
    from mailwarden_operator.spampolicy.spec import with_defaults
    spec = with_defaults({"policy": {}})
    assert spec["replicas"] == {"min": 2, "max": 10}
    assert spec["disruption"] == {"maxUnavailable": 1}
    assert spec["server"]["drainSeconds"] == 10
    assert spec["policy"]["thresholds"] == {"tag": 5.0, "quarantine": 10.0, "reject": 20.0}


# -- UnsubscribeStore -----------------------------------------------------------------------

def _store(name: str = "unsubscribestore.yaml") -> dict:
    return copy.deepcopy(next(d for d in _docs(REPO / "examples" / name)
                              if d["kind"] == "UnsubscribeStore"))


def _embedded() -> dict:
    return _store("unsubscribestore-dev.yaml")


@pytest.mark.parametrize("make, message", [
    (lambda: (lambda d: d["spec"].update(durability="replicated") or d)(_embedded()),
     "durability replicated needs PostgreSQL with a synchronous standby"),
    (lambda: (lambda d: d["spec"].update(replicas={"min": 1, "max": 2}) or d)(_embedded()),
     "embedded storage runs exactly one replica"),
    (lambda: (lambda d: d["spec"].pop("replicas") and d)(_embedded()),
     "embedded storage runs exactly one replica"),
    (lambda: (lambda d: d["spec"]["storage"].pop("postgres") and d)(_store()),
     "storage.type postgres needs storage.postgres.dsnSecretRef"),
    (lambda: (lambda d: d["spec"]["storage"].update(embedded={"size": "2Gi"}) or d)(_store()),
     "storage.embedded is only for storage.type embedded"),
    (lambda: (lambda d: d["spec"]["storage"].update(
        postgres={"dsnSecretRef": {"name": "pg"}}) or d)(_embedded()),
     "storage.postgres is only for storage.type postgres"),
    (lambda: (lambda d: d["spec"].update(replicas={"min": 4, "max": 2}) or d)(_store()),
     "replicas.min must not exceed replicas.max"),
    (lambda: (lambda d: d["spec"]["oneClick"].update(tokenMaxAgeDays=30) or d)(_store()),
     "tokenMaxAgeDays must be 0 (never expire) or at least 60"),
    (lambda: (lambda d: d["spec"]["http"].update(publicBaseURL="http://unsub.example.com")
              or d)(_store()),
     "http.publicBaseURL must be an https:// URL"),
    (lambda: (lambda d: d["metadata"].update(name="s" * 47) or d)(_store()),
     "UnsubscribeStore names are at most 46 characters"),
], ids=["embedded-replicated", "embedded-two-replicas", "embedded-default-replicas",
        "postgres-without-dsn", "embedded-block-on-postgres", "postgres-block-on-embedded",
        "replicas", "token-age", "plain-http", "name-length"])
def test_store_cel_rules_refuse_impossible_stores(make, message) -> None:
    doc = make()
    errors = validate_custom_resource(doc, CRDS["UnsubscribeStore"])
    assert any(message in e for e in errors), errors
    # The operator refuses the same spec when an API server skipped the rules (all but
    # the URL, which only appears in status).
    if "publicBaseURL" not in message:
        problems = store_spec.spec_errors(store_spec.with_defaults(doc["spec"]),
                                          doc["metadata"]["name"])
        assert problems, f"the operator would accept what CEL refuses: {message}"


def test_store_accepts_local_http_and_minimal_specs() -> None:
    doc = _embedded()
    doc["spec"]["http"]["publicBaseURL"] = "http://127.0.0.1:8080/unsubscribe"
    assert validate_custom_resource(doc, CRDS["UnsubscribeStore"]) == []
    minimal = {"apiVersion": "mailwarden.dev/v1alpha1", "kind": "UnsubscribeStore",
               "metadata": {"name": "s"}, "spec": {"storage": {
                   "type": "postgres", "postgres": {"dsnSecretRef": {"name": "pg"}}}}}
    assert validate_custom_resource(minimal, CRDS["UnsubscribeStore"]) == []
    defaulted = store_spec.with_defaults(minimal["spec"])
    assert defaulted["storage"]["postgres"]["dsnSecretRef"]["key"] == "dsn"
    assert defaulted["durability"] == "local" and defaulted["replicas"] == {"min": 2, "max": 6}
    assert defaulted["oneClick"] == {"enabled": True, "tokenMaxAgeDays": 0}
    assert "embedded" not in defaulted["storage"]


def test_store_storage_type_cannot_change_on_update() -> None:
    old = _store()
    new = _store()
    new["spec"]["storage"] = {"type": "embedded"}
    new["spec"]["durability"] = "local"
    new["spec"]["replicas"] = {"min": 1, "max": 1}
    assert validate_custom_resource(new, CRDS["UnsubscribeStore"]) == []  # as a create
    errors = validate_custom_resource(new, CRDS["UnsubscribeStore"], old=old)
    assert any("storage.type cannot change" in e for e in errors), errors
    # Other storage changes (another database) are fine.
    moved = _store()
    moved["spec"]["storage"]["postgres"]["dsnSecretRef"]["name"] = "other-pg"
    assert validate_custom_resource(moved, CRDS["UnsubscribeStore"], old=old) == []
