"""Reading the API server's audit log (providers that have one: the process provider writes
every write request -- create, update, patch, delete -- at Metadata level, one JSON event per
line; docs/control-plane.md). Tests mark where the log ends, act, and read what came after."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class Event:
    raw: dict[str, Any]

    @property
    def verb(self) -> str:
        return self.raw.get("verb", "")

    @property
    def user(self) -> str:
        return (self.raw.get("user") or {}).get("username", "")

    @property
    def pod_name(self) -> str | None:
        """The pod a service-account token was bound to (projected tokens)."""
        extra = (self.raw.get("user") or {}).get("extra") or {}
        names = extra.get("authentication.kubernetes.io/pod-name") or []
        return names[0] if names else None

    @property
    def user_agent(self) -> str:
        return self.raw.get("userAgent", "")

    @property
    def code(self) -> int | None:
        return (self.raw.get("responseStatus") or {}).get("code")

    @property
    def resource(self) -> str:
        ref = self.raw.get("objectRef") or {}
        sub = ref.get("subresource")
        return ref.get("resource", "") + (f"/{sub}" if sub else "")

    @property
    def namespace(self) -> str | None:
        return (self.raw.get("objectRef") or {}).get("namespace")

    @property
    def name(self) -> str | None:
        return (self.raw.get("objectRef") or {}).get("name")

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return (f"{self.verb} {self.resource} {where}{self.name} by {self.user} "
                f"({self.user_agent[:40]}) -> {self.code}")


@dataclass(frozen=True)
class AuditLog:
    path: Path

    def mark(self) -> int:
        """Where the log ends now."""
        return self.path.stat().st_size if self.path.exists() else 0

    def events(self, since: int = 0, until: int | None = None) -> list[Event]:
        """Complete events written between the marks `since` and `until` (None: now)."""
        with self.path.open("rb") as log:
            log.seek(since)
            data = log.read() if until is None else log.read(max(0, until - since))
        out = []
        for line in data.splitlines():
            if line.strip():
                try:
                    out.append(Event(json.loads(line)))
                except json.JSONDecodeError:
                    continue  # a line being written as we read
        return out

    def writes(self, since: int = 0, until: int | None = None) -> list[Event]:
        return [e for e in self.events(since, until) if e.verb in WRITE_VERBS]
