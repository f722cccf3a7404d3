"""kubectl for the e2e tests: the same client a platform engineer uses, against the cluster
the provider made (its own kubeconfig, never the user's current context)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

from e2e.prereqs import tool_path


class KubectlError(AssertionError):
    def __init__(self, args: list[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {result.returncode}:\n"
                         f"{result.stderr.strip() or result.stdout.strip()}")
        self.result = result


@dataclass
class Kube:
    kubeconfig: str
    namespace: str
    # PATH to find kubectl on (the provider's: the kubectl matching the server first).
    path: str | None = None

    def with_namespace(self, namespace: str) -> "Kube":
        return Kube(self.kubeconfig, namespace, self.path)

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 180, namespaced: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["kubectl", "--kubeconfig", self.kubeconfig]
        if namespaced:
            argv += ["--namespace", self.namespace]
        argv += list(args)
        env = {"PATH": self.path or tool_path(), "HOME": "/tmp"}
        result = subprocess.run(argv, input=input, capture_output=True, text=True,
                                timeout=timeout, env=env,
                                stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise KubectlError(list(args), result)
        return result

    def json(self, *args: str, namespaced: bool = True) -> Any:
        return json.loads(self.run(*args, "-o", "json", namespaced=namespaced).stdout)

    def get(self, kind: str, name: str, namespaced: bool = True) -> dict[str, Any] | None:
        result = self.run("get", kind, name, "-o", "json", check=False, namespaced=namespaced)
        if result.returncode != 0:
            if "NotFound" in result.stderr or "not found" in result.stderr:
                return None
            raise KubectlError(["get", kind, name], result)
        return json.loads(result.stdout)

    def items(self, kind: str, *selector: str, namespaced: bool = True) -> list[dict[str, Any]]:
        return self.json("get", kind, *selector, namespaced=namespaced)["items"]

    def apply(self, document: dict[str, Any] | str, *extra: str, check: bool = True,
              namespaced: bool = True) -> subprocess.CompletedProcess[str]:
        text = document if isinstance(document, str) else json.dumps(document)
        return self.run("apply", "-f", "-", *extra, input=text, check=check,
                        namespaced=namespaced)

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any]) -> None:
        self.run("patch", kind, name, "--type", "merge", "-p", json.dumps(patch))

    def raw(self, path: str) -> str:
        return self.run("get", "--raw", path, namespaced=False).stdout


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 1.0) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` and the last
    value or error seen (a wait, not a timed assertion: timeouts are generous)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
        except KubectlError as exc:
            value, last = None, exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} "
                                 f"(last: {last})")
        time.sleep(interval)


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def is_true(obj: dict[str, Any] | None, kind: str) -> bool:
    cond = condition(obj, kind)
    return bool(cond and cond.get("status") == "True")


def observed(obj: dict[str, Any] | None) -> bool:
    """The status describes the current spec (observedGeneration caught up)."""
    return bool(obj) and (obj.get("status") or {}).get("observedGeneration") == \
        obj["metadata"].get("generation")


def table(text: str) -> list[dict[str, str]]:
    """Parse `kubectl get` table output: columns are separated by two or more spaces
    (header names such as "POLICY HASH" contain single spaces)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    # Column starts are where a header word begins after 2+ spaces (or at 0).
    starts = [0] + [m.end() for m in re.finditer(r"\s{2,}", header)]
    names = [header[s:e].strip() for s, e in zip(starts, starts[1:] + [len(header) + 1])]
    rows = []
    for line in lines[1:]:
        cells = [line[s:e].strip() for s, e in zip(starts, starts[1:] + [len(line) + 1])]
        rows.append(dict(zip(names, cells)))
    return rows


def pod_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not (line.startswith(name + "{") or
                                        line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
