"""Shared by the benchmark tests: running `python -m benchmarks.run` and finding what it
left behind."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / ".cache" / "corpus"


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or working directory contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            cwd = os.readlink(f"/proc/{entry}/cwd")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (text.encode() in cmdline or text in cwd):
            found.append(f"{entry}: {cmdline.decode(errors='replace')[:120]}")
    return found
