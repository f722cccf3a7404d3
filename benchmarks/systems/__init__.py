"""The three systems under test. Each module knows how to configure its server in a temp
directory, train it on the train split, start it on loopback ports and hand out a client.

Common shape (`System`): `train()` (may start the server: Rspamd learns over HTTP),
`start()`, `roots()` (the pids whose process trees are measured), `client()`, `stop()`,
`describe()` (configuration notes for the report) and `trained` (what it learned).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field


@dataclass
class Training:
    ham: int = 0          # messages learned as ham
    spam: int = 0         # messages learned as spam
    offered_ham: int = 0  # messages offered
    offered_spam: int = 0
    seconds: float = 0.0
    note: str = ""


@dataclass
class SystemInfo:
    name: str
    version: str
    workers: int
    config: list[str] = field(default_factory=list)   # one line per configuration fact


def version_of(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"
