"""Policy directories in the kubelet ConfigMap layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from filter_server.policy.loader import generation_of, load_policy_dir
from filter_server.policy.validate import PolicyInvalid


def project(directory: Path, stamp: str, files: dict[str, bytes]) -> None:
    """Lay files out as the kubelet does and swap ..data atomically."""
    gen = directory / f"..{stamp}"
    gen.mkdir()
    for name, data in files.items():
        (gen / name).write_bytes(data)
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    tmp = directory / "..data_tmp"
    tmp.symlink_to(gen.name)
    os.replace(tmp, directory / "..data")


def test_kubelet_layout_snapshot_and_generation(tmp_path):
    project(tmp_path, "2026_1", {"policy.yaml": yaml.safe_dump({"thresholds": {"tag": 4}}).encode()})
    first = load_policy_dir(tmp_path)
    assert first.policy["thresholds"]["tag"] == 4
    assert first.generation == "..2026_1" == generation_of(tmp_path)
    project(tmp_path, "2026_2", {"policy.yaml": yaml.safe_dump({"thresholds": {"tag": 3}}).encode()})
    second = load_policy_dir(tmp_path)
    assert generation_of(tmp_path) == "..2026_2"
    assert second.policy["thresholds"]["tag"] == 3 and second.hash != first.hash


def test_plain_directory_generation_changes_when_files_change(tmp_path):
    (tmp_path / "policy.yaml").write_text("{}")
    before = generation_of(tmp_path)
    (tmp_path / "policy.yaml").write_text("thresholds: {tag: 1}\n")
    assert generation_of(tmp_path) != before


def test_missing_policy_file_is_a_clear_error(tmp_path):
    with pytest.raises(PolicyInvalid) as info:
        load_policy_dir(tmp_path)
    assert f"{tmp_path} holds no policy.yaml" in str(info.value)


def test_configmap_ref_needs_the_operator(tmp_path):
    (tmp_path / "policy.yaml").write_text("model: {configMapRef: {name: m}}\n")
    with pytest.raises(PolicyInvalid) as info:
        load_policy_dir(tmp_path)
    assert "needs model.file" in str(info.value)
