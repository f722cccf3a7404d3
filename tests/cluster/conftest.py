"""A real control plane (e2e/cluster) for the tests in this folder: started once, stopped
after the folder's last test (also when a test fails or the run is interrupted), so it does
not idle through the rest of the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster import ControlPlane


@pytest.fixture(scope="package")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(Path(tmp_path_factory.mktemp("control-plane")))
    with cp:
        yield cp
