"""The kind configuration and the GitHub Actions workflows parse and have the shape the e2e
suite and docs/e2e.md rely on (no cluster and no GitHub needed to check that)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
ZONE = "topology.kubernetes.io/zone"
PINNED_ACTION = re.compile(r"^[\w.-]+/[\w.-]+@(v\d+\.\d+\.\d+|[0-9a-f]{40})$")


def load(path: Path) -> Any:
    # BaseLoader keeps every scalar a string: YAML 1.1 would read the key `on` as True.
    return yaml.load(path.read_text(), Loader=yaml.BaseLoader)


def test_kind_config_has_one_control_plane_and_three_workers_in_two_zones() -> None:
    config = yaml.safe_load((REPO / "e2e" / "kind.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") == 3
    zones = [node.get("labels", {}).get(ZONE) for node in config["nodes"]
             if node["role"] == "worker"]
    assert None not in zones and len(set(zones)) == 2, zones
    # Every node runs the same image, pinned by digest, at a version the chart supports.
    images = {node["image"] for node in config["nodes"]}
    assert len(images) == 1
    image = images.pop()
    match = re.fullmatch(r"kindest/node:v1\.(\d+)\.\d+@sha256:[0-9a-f]{64}", image)
    assert match and int(match.group(1)) >= 30, image


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_every_workflow_parses_and_pins_its_actions() -> None:
    files = sorted(WORKFLOWS.glob("*.y*ml"))
    assert {f.name for f in files} >= {"e2e.yml", "ci.yml"}
    for path in files:
        workflow = load(path)
        assert workflow["name"] and workflow["jobs"], path.name
        assert workflow["permissions"] == {"contents": "read"}, path.name
        for job in workflow["jobs"].values():
            assert job["runs-on"].startswith("ubuntu-") and job["runs-on"] != "ubuntu-latest"
            assert int(job["timeout-minutes"]) <= 90
        for step in steps(workflow):
            if "uses" in step:
                assert PINNED_ACTION.match(step["uses"]), f"{path.name}: {step['uses']}"


def test_e2e_workflow_runs_the_kind_suite_on_push() -> None:
    workflow = load(WORKFLOWS / "e2e.yml")
    assert "push" in workflow["on"]
    all_steps = steps(workflow)
    uses = [s.get("uses", "").split("@")[0] for s in all_steps]
    runs = "\n".join(s.get("run", "") for s in all_steps)
    assert {"actions/checkout", "actions/setup-python", "azure/setup-helm",
            "azure/setup-kubectl", "actions/upload-artifact"} <= set(uses)
    # kind at a pinned version (the env holds it), the suite through e2e/run.sh.
    env = next(iter(workflow["jobs"].values()))["env"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", env["KIND_VERSION"])
    assert 'go install "sigs.k8s.io/kind@${KIND_VERSION}"' in runs
    assert any(s.get("run", "").strip() == "e2e/run.sh" for s in all_steps)
    upload = next(s for s in all_steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"
    assert "!e2e/out/kubeconfig" in upload["with"]["path"]  # no credentials in artifacts
    assert (REPO / "e2e" / "run.sh").stat().st_mode & 0o111, "e2e/run.sh must be executable"


def test_ci_workflow_runs_dot_ci_run() -> None:
    workflow = load(WORKFLOWS / "ci.yml")
    assert "push" in workflow["on"]
    runs = [s.get("run", "").strip() for s in steps(workflow)]
    assert "bash .ci/run" in runs
