"""A real control plane (e2e/cluster) for the tests in this folder: started once per module
run, stopped at the end (also when a test fails or the run is interrupted)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster import ControlPlane


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(Path(tmp_path_factory.mktemp("control-plane")))
    with cp:
        yield cp
