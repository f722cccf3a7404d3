"""One FaultEnv (model, messages, work directory) for the whole fault suite."""

from __future__ import annotations

import pytest

from tests.fault.common import CorpusMissing, FaultEnv, profile_from_env


@pytest.fixture(scope="session")
def fault_env(tmp_path_factory):
    try:
        env = FaultEnv(profile_from_env(), tmp_path_factory.mktemp("fault"))
    except CorpusMissing as exc:
        pytest.fail(f"{exc}\nThe fault suite classifies real mail from the corpus.")
    yield env
    env.close()
