"""The operator's behaviour on a real control plane (e2e/cluster, docs/control-plane.md):
one cluster for this folder, started once and stopped after its last test, with
Mailwarden's CRDs (generated, from `crds/`) installed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from e2e.cluster import ControlPlane
from tests.operator_cluster.kubeapi import install_crds


@pytest.fixture(scope="package")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(Path(tmp_path_factory.mktemp("operator-control-plane")))
    with cp:
        yield cp


@pytest.fixture(scope="package")
def crds_installed(control_plane: ControlPlane) -> list[str]:
    """The names of the CRDs in `crds/`, created and Established."""
    return install_crds(control_plane)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(control_plane.api_client()).create_namespace(
        {"metadata": {"name": name}})
    return name
