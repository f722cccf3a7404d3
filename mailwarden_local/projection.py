"""Writing a directory the way the kubelet projects a ConfigMap volume, so local mode and
the tests exercise exactly the layout pods see:

    DIR/..2026_11_23_07_00_00.123456789/{policy.yaml,model.json.gz}   one generation
    DIR/..data -> ..2026_11_23_07_00_00.123456789                      swapped atomically
    DIR/policy.yaml -> ..data/policy.yaml                              stable names

An update writes a new generation directory, then renames a new `..data` link over the old
one (one atomic rename), so a reader resolving `..data` sees all old or all new files.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path


def _generation_name() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{time.time_ns() % 1_000_000_000:09d}"


def project(directory: Path, files: dict[str, bytes]) -> Path:
    """Make `files` the current content of `directory`; returns the new generation dir."""
    directory.mkdir(parents=True, exist_ok=True)
    data_link = directory / "..data"
    old = os.readlink(data_link) if data_link.is_symlink() else None
    name = _generation_name()
    while (directory / name).exists() or name == old:
        name = _generation_name()
    generation = directory / name
    generation.mkdir()
    for filename, content in files.items():
        (generation / filename).write_bytes(content)
    tmp_link = directory / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    os.symlink(name, tmp_link)
    os.replace(tmp_link, data_link)  # the atomic switch
    for filename in files:
        link = directory / filename
        if not link.is_symlink():
            os.symlink(f"..data/{filename}", link)
    for entry in directory.iterdir():  # names the new generation no longer has
        if entry.is_symlink() and entry.name not in files and not entry.name.startswith(".."):
            entry.unlink()
    if old is not None:
        shutil.rmtree(directory / old, ignore_errors=True)
    return generation
