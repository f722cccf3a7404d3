"""Reading a policy directory laid out the way the kubelet projects a ConfigMap:

    DIR/policy.yaml -> ..data/policy.yaml
    DIR/model.bin   -> ..data/model.bin
    DIR/..data      -> ..2026_11_23_07_00_00.123456789   (swapped atomically on update)

A snapshot is read through the resolved `..data` target, so policy and model always come
from the same generation even while the kubelet swaps the link. Plain directories (local
mode, tests) work too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filter_server.policy.validate import PolicyError, PolicyInvalid, load_policy_file

POLICY_FILE = "policy.yaml"
HASH_LENGTH = 16


def policy_hash(policy: dict[str, Any], model_bytes: bytes | None) -> str:
    """Content hash of a defaulted policy and its model: the name of what is serving.

    The operator names the policy ConfigMap with it and the filter server reports it in
    every response, so both must call this one function on the same content."""
    digest = hashlib.sha256()
    digest.update(json.dumps(policy, sort_keys=True, separators=(",", ":")).encode())
    digest.update(b"\0")
    digest.update(model_bytes or b"")
    return digest.hexdigest()[:HASH_LENGTH]


@dataclass(frozen=True)
class LoadedPolicy:
    policy: dict[str, Any]       # validated, defaults applied
    model_bytes: bytes | None
    hash: str
    generation: str              # what ..data pointed at (or the directory itself)


def generation_of(directory: Path) -> str:
    """Identifies the current content generation of `directory` (cheap to poll)."""
    data = directory / "..data"
    if data.is_symlink():
        return os.readlink(data)
    try:
        stat = (directory / POLICY_FILE).stat()
    except FileNotFoundError:
        return "missing"
    model_stamp = ""
    for entry in sorted(directory.iterdir()):
        if entry.name != POLICY_FILE and entry.is_file():
            s = entry.stat()
            model_stamp += f"{entry.name}:{s.st_mtime_ns}:{s.st_size};"
    return f"{stat.st_mtime_ns}:{stat.st_size}:{model_stamp}"


def load_policy_dir(directory: Path) -> LoadedPolicy:
    """Read and validate one consistent snapshot; raises PolicyInvalid with every error."""
    directory = Path(directory)
    generation = generation_of(directory)
    data = directory / "..data"
    snapshot = data.resolve() if data.is_symlink() else directory
    if not (snapshot / POLICY_FILE).is_file():
        raise PolicyInvalid([PolicyError("", f"{directory} holds no {POLICY_FILE}")])
    policy = load_policy_file(snapshot / POLICY_FILE, base_dir=snapshot)
    model_bytes = None
    if "model" in policy:
        if "file" not in policy["model"]:
            raise PolicyInvalid([PolicyError(
                "model", "a policy directory needs model.file (configMapRef is resolved "
                "by the operator)")])
        model_bytes = (snapshot / policy["model"]["file"]).read_bytes()
    return LoadedPolicy(policy, model_bytes, policy_hash(policy, model_bytes), generation)
