"""The supervisor hands each worker its settings as JSON (`ServeConfig.to_json` /
`from_json`); a path setting that came back as a string broke the worker that used it
(`--suppression-store-tls-dir` did, until from_json stopped keeping a list of names)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from filter_server.server.config import ServeConfig


def test_every_path_setting_survives_the_trip_to_a_worker(tmp_path: Path) -> None:
    paths = {field.name: tmp_path / field.name for field in dataclasses.fields(ServeConfig)
             if "Path" in str(field.type)}
    assert {"policy_dir", "tls_dir", "suppression_store_tls_dir", "learn_dir"} <= set(paths)
    config = ServeConfig(**paths)
    again = ServeConfig.from_json(config.to_json())
    assert again == config
    assert all(isinstance(getattr(again, name), Path) for name in paths)


def test_unset_paths_stay_unset() -> None:
    config = ServeConfig(policy_dir=Path("/p"))
    assert ServeConfig.from_json(config.to_json()).tls_dir is None
