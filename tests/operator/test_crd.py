"""The CRDs: generated from Python, committed copies in sync, structural, documented,
valid CustomResourceDefinitions for Kubernetes 1.30 and the newest version."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from filter_server.policy.schema import POLICY_SCHEMA
from mailwarden_operator import crd
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


def test_every_field_is_typed_and_documented() -> None:
    schema = crd.spampolicy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(schema):
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
                  "readyReplicas", "lastPropagationSeconds"):
        assert field in status["properties"]


def test_crd_shape() -> None:
    body = crd.spampolicy_crd()
    version = body["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert "scale" not in version["subresources"]  # the HPA owns replica counts
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:3] == ["Ready", "Replicas", "Policy Hash"] and "Age" in columns
    assert body["spec"]["names"]["shortNames"] and body["spec"]["names"]["categories"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(crd.all_crds()))
def test_crds_are_valid_kubernetes_objects(name: str, version: str) -> None:
    kubernetes_validate.validate(yaml.safe_load((REPO / "crds" / name).read_text()),
                                 version, strict=True)
