"""The live policy of one worker: loaded and compiled off the request path, swapped in
atomically (one attribute assignment; a request reads `holder.current` once and uses that
policy to the end), and never replaced by a broken one."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from filter_server.engine.compiled import CompiledPolicy
from filter_server.policy.loader import generation_of, load_policy_dir
from filter_server.policy.validate import PolicyInvalid
from filter_server.server.metrics import FilterMetrics


class PolicyLoadError(Exception):
    """A policy version could not be loaded or compiled; `problems` says why, one per line."""

    def __init__(self, directory: Path, problems: list[str]) -> None:
        super().__init__(f"invalid policy in {directory}: " + "; ".join(problems))
        self.problems = problems


def load_and_compile(directory: Path) -> CompiledPolicy:
    """Read, validate and compile the policy in `directory`; raises PolicyLoadError only."""
    try:
        return CompiledPolicy(load_policy_dir(directory))
    except PolicyInvalid as exc:
        raise PolicyLoadError(directory, [str(e) for e in exc.errors]) from None
    except OSError as exc:
        raise PolicyLoadError(directory, [f"cannot read: {exc}"]) from None
    except Exception as exc:  # a model that does not load, an engine compile failure ...
        raise PolicyLoadError(directory, [f"{type(exc).__name__}: {exc}"]) from None


def _generation(directory: Path) -> str:
    try:
        return generation_of(directory)
    except OSError as exc:  # not a directory, no permission: report it via the load
        return f"unreadable:{exc.errno}"


def _rule_count(policy: CompiledPolicy) -> int:
    return len(policy.rules) + len(policy.metas)


class PolicyHolder:
    def __init__(self, directory: Path, metrics: FilterMetrics, log: logging.Logger) -> None:
        self.directory = Path(directory)
        self.current: CompiledPolicy | None = None
        self._metrics = metrics
        self._log = log
        self._seen_generation: str | None = None  # last generation tried, good or bad

    def load_initial(self, wait_seconds: float, poll_seconds: float,
                     stop: threading.Event) -> PolicyLoadError | None:
        """Load the first policy, retrying for up to `wait_seconds` while it is missing or
        invalid (each new error is logged). Returns the last error if it never loaded."""
        deadline = time.monotonic() + wait_seconds
        last_logged: list[str] | None = None
        while True:
            self._seen_generation = _generation(self.directory)
            try:
                policy = load_and_compile(self.directory)
            except PolicyLoadError as exc:
                if time.monotonic() >= deadline or stop.is_set():
                    return exc
                if exc.problems != last_logged:
                    self._log.warning("waiting for a valid policy", extra={
                        "policy_dir": str(self.directory), "errors": exc.problems})
                    last_logged = exc.problems
                stop.wait(poll_seconds)
                if stop.is_set():
                    return exc
                continue
            self._swap(policy, first=True)
            return None

    def install(self, policy: CompiledPolicy) -> None:
        """Start with a policy compiled elsewhere (the preflight check)."""
        self._seen_generation = _generation(self.directory)
        self._swap(policy, first=True)

    def poll_forever(self, poll_seconds: float, stop: threading.Event) -> None:
        """Reload whenever the directory's generation changes, until `stop` is set."""
        while not stop.wait(poll_seconds):
            self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """One poll: True when a new policy was swapped in."""
        generation = _generation(self.directory)
        if generation == self._seen_generation:
            return False
        self._seen_generation = generation
        try:
            policy = load_and_compile(self.directory)
        except PolicyLoadError as exc:
            self._metrics.policy_reload_failures.inc()
            self._log.error("new policy rejected; the previous policy keeps serving", extra={
                "policy_dir": str(self.directory), "errors": exc.problems,
                "policy_hash": self.current.hash if self.current else None})
            return False
        if self.current is not None and policy.hash == self.current.hash:
            self._log.debug("policy directory changed, content did not",
                            extra={"policy_hash": policy.hash})
            return False
        self._swap(policy, first=False)
        return True

    def _swap(self, policy: CompiledPolicy, *, first: bool) -> None:
        old = self.current
        self.current = policy  # the atomic swap: requests read this attribute once
        self._metrics.policy_swapped(old.hash if old else None, policy.hash,
                                     _rule_count(policy))
        if not first:
            self._metrics.policy_reloads.inc()
        self._log.info("policy loaded" if first else "policy reloaded", extra={
            "policy_hash": policy.hash, "previous_hash": old.hash if old else None,
            "rules": len(policy.rules), "meta_rules": len(policy.metas),
            "model": policy.model is not None})
