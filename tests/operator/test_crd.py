"""The CRDs: generated from Python, committed copies in sync, structural, documented,
valid CustomResourceDefinitions for Kubernetes 1.30 and the newest version."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from filter_server.policy.schema import POLICY_SCHEMA
from mailwarden_operator import crd
from tests.operator.crd_validation import default_errors, metadata_schema_errors
from tests.operator.k8s_schemas import VERSIONS

import kubernetes_validate

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("directory", ["crds", "charts/mailwarden/crds"])
def test_committed_crds_match_the_generator(directory: str) -> None:
    expected = crd.all_crds()
    present = {p.name for p in (REPO / directory).glob("*.yaml")}
    assert present == set(expected), \
        f"{directory} differs from the generator: run `python -m mailwarden_operator.crd`"
    for name, body in expected.items():
        text = (REPO / directory / name).read_text()
        assert text == crd.render_yaml(body), \
            f"{directory}/{name} is stale: run `python -m mailwarden_operator.crd`"


def test_spec_policy_is_the_policy_schema_verbatim() -> None:
    schema = crd.spampolicy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["spec"]["properties"]["policy"] == POLICY_SCHEMA


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _store_crd() -> dict[str, Any]:
    from mailwarden_operator.unsubscribestore.crd import unsubscribestore_crd
    return unsubscribestore_crd()


@pytest.mark.parametrize("make", [crd.spampolicy_crd, _store_crd],
                         ids=["SpamPolicy", "UnsubscribeStore"])
def test_every_field_is_typed_and_documented(make) -> None:
    schema = make()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(schema):
        if path == ".metadata":
            continue  # the API server's own; a CRD may not even describe it
        typed = ("type" in node or node.get("x-kubernetes-int-or-string")
                 or node.get("x-kubernetes-preserve-unknown-fields"))
        assert typed, f"{path or '<root>'} has no type (the schema must be structural)"
        if path.endswith("{}") or path.endswith("[]"):
            continue  # map values and list items are described by their parent field
        assert node.get("description"), f"{path or '<root>'} has no description"


def test_status_keeps_kopf_fields_and_declares_what_the_operator_writes() -> None:
    status = crd.spampolicy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["status"]
    assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    for field in ("observedGeneration", "conditions", "policyHash", "replicas",
                  "readyReplicas", "lastPropagationSeconds", "suppressionStore"):
        assert field in status["properties"]


def test_store_status_declares_everything_the_status_function_writes() -> None:
    """A field missing from the schema would be pruned by the API server: every key the
    store's status function produces must be declared (kopf's bookkeeping preserved)."""
    from mailwarden_operator.spampolicy.status import Rollout
    from mailwarden_operator.unsubscribestore.status import StoreObservation, compute_store_status
    import datetime
    status = _store_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"]["status"]
    assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    written, _ = compute_store_status(None, StoreObservation(
        generation=1, storage="postgres", durability="replicated", min_replicas=2,
        deployment_exists=True, rollout=Rollout("abc", True, 2, 2, 2, 2, 2),
        signing_key_secret="s-signing-key",
        endpoints={"grpc": "g:1", "http": "h", "publicBaseURL": "https://u"}),
        datetime.datetime.now(datetime.UTC))
    for key, value in written.items():
        assert key in status["properties"], f"status.{key} is not declared"
        if isinstance(value, dict):
            assert set(value) <= set(status["properties"][key]["properties"])
    for condition in written["conditions"]:
        assert set(condition) <= set(status["properties"]["conditions"]["items"][
            "properties"])


def test_store_crd_shape() -> None:
    body = _store_crd()
    version = body["spec"]["versions"][0]
    assert body["metadata"]["name"] == "unsubscribestores.mailwarden.dev"
    assert body["spec"]["names"]["kind"] == "UnsubscribeStore"
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:3] == ["Ready", "Replicas", "Storage"] and columns[-1] == "Age"
    assert body["spec"]["names"]["shortNames"] and \
        "mailwarden" in body["spec"]["names"]["categories"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = " ".join(r["rule"] for r in spec["x-kubernetes-validations"])
    assert "embedded" in rules and "replicated" in rules
    # Every string a CEL rule looks at is bounded (the API server's CEL cost budget).
    url = spec["properties"]["http"]["properties"]["publicBaseURL"]
    assert url["maxLength"] <= 4096


def test_crd_shape() -> None:
    body = crd.spampolicy_crd()
    version = body["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert "scale" not in version["subresources"]  # the HPA owns replica counts
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:3] == ["Ready", "Replicas", "Policy Hash"] and "Age" in columns
    assert body["spec"]["names"]["shortNames"] and body["spec"]["names"]["categories"]


@pytest.mark.parametrize("name", ["spampolicies.mailwarden.dev.yaml",
                                  "unsubscribestores.mailwarden.dev.yaml"])
def test_not_in_the_all_category(name: str) -> None:
    # `kubectl delete all --all` must not delete our resources (issue 13 item 17).
    assert crd.all_crds()[name]["spec"]["names"]["categories"] == ["mailwarden"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(crd.all_crds()))
def test_crds_are_valid_kubernetes_objects(name: str, version: str) -> None:
    kubernetes_validate.validate(yaml.safe_load((REPO / "crds" / name).read_text()),
                                 version, strict=True)


@pytest.mark.parametrize("name", sorted(crd.all_crds()))
def test_root_metadata_is_only_typed(name: str) -> None:
    """The API server refuses a CRD whose root `metadata` says more than `type: object` (or
    restricts more than name/generateName): "must not specify anything other than name and
    generateName" (issue 13 item 1)."""
    assert metadata_schema_errors(crd.all_crds()[name]) == []


@pytest.mark.parametrize("name", sorted(crd.all_crds()))
def test_every_default_validates_as_written(name: str) -> None:
    """The API server validates each default as written — schema and CEL, without filling in
    nested defaults first — and refuses the CRD otherwise (issue 13 item 2: `replicas:
    default {}` under the rule `self.min <= self.max`)."""
    assert default_errors(crd.all_crds()[name]) == []


def test_default_validation_catches_what_the_api_server_refuses() -> None:
    """The checks above see the defects the API server refused (so they can fail)."""
    body = crd.spampolicy_crd()
    schema = body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["metadata"]["description"] = "Standard object metadata."
    assert metadata_schema_errors(body)
    replicas = schema["properties"]["spec"]["properties"]["replicas"]
    replicas["default"] = {}
    assert any("replicas.min must not exceed replicas.max" in e for e in default_errors(body))
    replicas["default"] = {"min": 2, "max": 10, "extra": 1}
    assert any("unknown fields" in e for e in default_errors(body))
