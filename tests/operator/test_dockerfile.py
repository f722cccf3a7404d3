"""The Dockerfile cannot be built here (no container engine); these checks keep it in step
with the packaging: it copies every installed package folder, runs non-root, and its
entrypoint is the `mailwarden` console script."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Every folder setup.py installs a package from (the image must hold all of them: the CLI
# registers every command, local mode's included).
COMPONENT_FOLDERS = ("mailwarden", "filter_server", "unsubscribe_store", "operator",
                     "mailwarden_local")


def test_dockerfile_copies_every_package_and_runs_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+", text, re.M)
    assert len(stages) == 2, "multi-stage: build, then a runtime stage"
    copied = set(re.findall(r"^COPY\s+(\S+)\s+\./\1\s*$", text, re.M))
    assert copied >= set(COMPONENT_FOLDERS)
    assert "COPY pyproject.toml setup.py README.md ./" in text
    # The image runs every component: it installs all their dependencies.
    assert re.search(r'pip install "\.\[all\]"', text)
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert 'ENTRYPOINT ["mailwarden"]' in text
    # The filter pods and the chart run as this UID.
    from mailwarden_operator.common.render import RUN_AS_USER
    assert RUN_AS_USER == 65532


def test_dockerignore_admits_exactly_what_the_image_copies() -> None:
    lines = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[0] == "*"
    admitted = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    assert admitted == {"pyproject.toml", "setup.py", "README.md", *COMPONENT_FOLDERS}
