"""Fixtures of the kind suite. e2e/run.sh creates the cluster, installs everything and runs
this suite with the variables below; without a container engine, kind, kubectl and helm (or
without the cluster run.sh makes) every test is skipped with one line saying what is missing.

  MAILWARDEN_E2E_KUBECONFIG   kubeconfig of the kind cluster (required)
  MAILWARDEN_E2E_NAMESPACE    namespace holding the examples (default mailwarden-e2e)
  MAILWARDEN_E2E_IMAGE        the image run.sh built and loaded (default mailwarden:e2e)
  MAILWARDEN_E2E_SPLIT        corpus split with test/{ham,spam} (default .cache/split)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import prereqs
from e2e.jobs import install_client
from e2e.kube import Kube, is_true, observed, pod_ready, wait_for
from mailwarden_operator.spampolicy import naming

REPO = prereqs.REPO
EXAMPLES = REPO / "examples"
# Messages the client Jobs send: held-out mail (the test split, never trained on), small
# enough that a ConfigMap holds them all.
MESSAGES_PER_CLASS = 8
MAX_MESSAGE_BYTES = 24 * 1024


def example(name: str) -> dict[str, Any] | None:
    path = EXAMPLES / name
    if not path.is_file():
        return None
    return next(d for d in yaml.safe_load_all(path.read_text()) if d)


@dataclass
class E2E:
    kube: Kube
    namespace: str
    image: str
    split: Path
    policy: str                  # the SpamPolicy of examples/spampolicy.yaml
    store: str | None            # the UnsubscribeStore of examples/unsubscribestore-dev.yaml

    @property
    def headless_host(self) -> str:
        return f"{naming.headless_name(self.policy)}.{self.namespace}.svc.cluster.local"

    @property
    def target(self) -> str:
        return f"dns:///{self.headless_host}:{naming.GRPC_PORT}"

    @property
    def workload(self) -> str:
        return naming.workload_name(self.policy)

    @property
    def selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in naming.selector_labels(self.policy).items())

    def spampolicy(self) -> dict[str, Any]:
        found = self.kube.get("spampolicy", self.policy)
        assert found, f"SpamPolicy {self.policy} is gone"
        return found

    def filter_pods(self, ready_only: bool = True) -> list[dict[str, Any]]:
        pods = self.kube.items("pods", "-l", self.selector)
        return [p for p in pods if pod_ready(p)] if ready_only else pods

    def wait_policy_settled(self, timeout: float = 600) -> dict[str, Any]:
        """Ready, rollout complete, status current, every pod of the Deployment ready."""
        def settled() -> dict[str, Any] | None:
            sp = self.spampolicy()
            dep = self.kube.get("deployment", self.workload) or {}
            status = dep.get("status") or {}
            want = (dep.get("spec") or {}).get("replicas")
            if (observed(sp) and is_true(sp, "Ready") and not is_true(sp, "Progressing")
                    and sp["status"].get("policyHash") == sp["status"].get("desiredPolicyHash")
                    and status.get("observedGeneration") == dep["metadata"]["generation"]
                    and status.get("updatedReplicas") == want
                    and status.get("readyReplicas") == want
                    and status.get("replicas") == want
                    and len(self.filter_pods(ready_only=False)) == want):
                return sp
            return None
        return wait_for(settled, timeout, f"SpamPolicy {self.policy} to settle", interval=2)


class SuiteSkipped(pytest.Item):
    """Stands for the whole suite when it cannot run, so the run shows ONE skip line."""

    def __init__(self, *, reason: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def runtest(self) -> None:
        pytest.skip(self.reason)

    def reportinfo(self) -> tuple[Path, int, str]:
        return Path(__file__), 0, "e2e suite"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    ours = [item for item in items if Path(str(item.path)).is_relative_to(Path(__file__).parent)]
    reason = prereqs.skip_reason() if ours else None
    if not reason:
        return
    config.hook.pytest_deselected(items=ours)
    items[:] = [item for item in items if item not in ours]
    items.append(SuiteSkipped.from_parent(session, name="e2e", reason=reason))


@pytest.fixture(scope="session", autouse=True)
def e2e() -> E2E:
    reason = prereqs.skip_reason()
    if reason:  # (collection already replaced the suite by one skipped item)
        pytest.skip(reason)
    namespace = os.environ.get("MAILWARDEN_E2E_NAMESPACE", "mailwarden-e2e")
    policy = example("spampolicy.yaml")
    store = example("unsubscribestore-dev.yaml")
    env = E2E(kube=Kube(os.environ[prereqs.KUBECONFIG_ENV], namespace),
              namespace=namespace,
              image=os.environ.get("MAILWARDEN_E2E_IMAGE", "mailwarden:e2e"),
              split=Path(os.environ.get("MAILWARDEN_E2E_SPLIT", REPO / ".cache" / "split")),
              policy=policy["metadata"]["name"],
              store=store["metadata"]["name"] if store else None)
    install_client(env.kube, pick_messages(env.split))
    return env


def pick_messages(split: Path) -> dict[str, bytes]:
    chosen: dict[str, bytes] = {}
    for label in ("spam", "ham"):
        directory = split / "test" / label
        files = sorted(p for p in directory.iterdir()
                       if p.is_file() and p.stat().st_size <= MAX_MESSAGE_BYTES)
        assert len(files) >= MESSAGES_PER_CLASS, f"too few messages in {directory}"
        for path in files[:MESSAGES_PER_CLASS]:
            chosen[f"{label}-{path.name}"] = path.read_bytes()
    return chosen


@pytest.fixture(scope="session")
def kube(e2e: E2E) -> Kube:
    return e2e.kube


@pytest.fixture(scope="session")
def store_name(e2e: E2E) -> str:
    if e2e.store is None:
        pytest.skip("examples/unsubscribestore-dev.yaml is not in this checkout "
                    "(the UnsubscribeStore resource has not landed yet)")
    return e2e.store
