"""Fixtures of the e2e suite (docs/e2e.md). The session brings a cluster up with the chosen
provider (`--e2e-provider` or MAILWARDEN_E2E_PROVIDER: `process`, the default, or `kind`),
installs the chart with helm, prepares the namespace, the model and the examples, runs the
tests in file order, and tears everything down -- collecting diagnostics into
E2E_OUT/diagnostics when something failed.

  E2E_OUT                     logs, trained model, diagnostics (default e2e/out)
  MAILWARDEN_E2E_NAMESPACE    namespace holding the examples (default mailwarden-e2e)

The process provider never skips (what it lacks is an error); the kind provider, without a
container engine, kind, kubectl or helm, replaces the suite by ONE skipped item naming what
is missing.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import diagnostics, install, prereqs, providers
from e2e.install import HelmResult
from e2e.jobs import install_client
from e2e.kube import Kube, is_true, observed, pod_ready, wait_for
from e2e.providers import Cluster, Provider
from mailwarden_operator.spampolicy import naming
from testkit.pg import PgCluster

REPO = prereqs.REPO
EXAMPLES = REPO / "examples"
OUT = Path(os.environ.get("E2E_OUT", REPO / "e2e" / "out"))
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
    cluster: Cluster
    installed: HelmResult        # the `helm install` of the chart
    out: Path = OUT
    # seconds from session start: "cluster up", "chart installed", "examples applied"
    timeline: dict[str, float] = field(default_factory=dict)

    def kube_in(self, namespace: str) -> Kube:
        return self.kube.with_namespace(namespace)

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

    def wait_policy_live(self, timeout: float = 600) -> dict[str, Any]:
        """The desired policy serves on every replica (rollout complete), old pods may still
        be terminating."""
        def live() -> dict[str, Any] | None:
            sp = self.spampolicy()
            status = sp.get("status") or {}
            return sp if (observed(sp) and is_true(sp, "Ready")
                          and not is_true(sp, "Progressing")
                          and status.get("policyHash") == status.get("desiredPolicyHash")) \
                else None
        return wait_for(live, timeout, f"SpamPolicy {self.policy}'s policy to be live",
                        interval=2)

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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("e2e").addoption(
        "--e2e-provider", choices=providers.NAMES, default=None,
        help=f"cluster provider of the e2e suite (default ${providers.ENV} or "
             f"{providers.DEFAULT}); see docs/e2e.md")


def provider_name(config: pytest.Config) -> str:
    return (config.getoption("--e2e-provider", default=None)
            or os.environ.get(providers.ENV) or providers.DEFAULT)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    ours = [item for item in items if Path(str(item.path)).is_relative_to(Path(__file__).parent)]
    reason = providers.make(provider_name(config)).skip_reason() if ours else None
    if not reason:
        return
    config.hook.pytest_deselected(items=ours)
    items[:] = [item for item in items if item not in ours]
    items.append(SuiteSkipped.from_parent(session, name="e2e", reason=reason))


class Session:
    """Brings the cluster up and installs everything; remembers how far it got, so that a
    failure half-way still gets its diagnostics and a full teardown."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.cluster: Cluster | None = None
        self.began = time.monotonic()
        self.timeline: dict[str, float] = {}

    def mark(self, what: str) -> None:
        self.timeline[what] = time.monotonic() - self.began

    def bring_up(self) -> E2E:
        namespace = os.environ.get("MAILWARDEN_E2E_NAMESPACE", "mailwarden-e2e")
        training = install.start_training(OUT)
        try:
            self.cluster = cluster = self.provider.up(OUT)
            self.mark("cluster up")
            kube = Kube(str(cluster.kubeconfig), namespace, cluster.path)
            installed = install.install_chart(cluster)
            self.mark("chart installed")
            install.restricted_namespace(kube, namespace)
            model = install.finish_training(training, OUT)
            self.mark("model trained")
            install.model_configmap(kube, model)
            install.apply_examples(kube)
            self.mark("examples applied")
        finally:
            if training.poll() is None:
                training.kill()
                training.wait()
        policy = example("spampolicy.yaml")
        store = example("unsubscribestore-dev.yaml")
        env = E2E(kube=kube, namespace=namespace, image=cluster.image, split=OUT / "split",
                  policy=policy["metadata"]["name"],
                  store=store["metadata"]["name"] if store else None,
                  cluster=cluster, installed=installed, timeline=self.timeline)
        install_client(env.kube, pick_messages(env.split))
        return env

    def tear_down(self, failed: bool) -> None:
        try:
            if failed:
                directory = OUT / "diagnostics"
                if self.cluster is not None:
                    diagnostics.collect(Kube(str(self.cluster.kubeconfig), "default",
                                             self.cluster.path), directory)
                self.provider.collect_logs(directory / "cluster")
                print(f"\ne2e: diagnostics in {directory}")
        finally:
            self.provider.down()


@pytest.fixture(scope="session", autouse=True)
def e2e(request: pytest.FixtureRequest) -> Iterator[E2E]:
    """The cluster, the chart and the examples, for the whole session; torn down at its end
    (diagnostics first when something failed)."""
    provider = providers.make(provider_name(request.config))
    reason = provider.skip_reason()
    if reason:  # (collection already replaced the suite by one skipped item)
        pytest.skip(reason)
    session = Session(provider)
    env: E2E | None = None
    try:
        env = session.bring_up()
        print(f"\ne2e on the {provider.name} provider: " +
              ", ".join(f"{k} after {v:.0f} s" for k, v in session.timeline.items()))
        yield env
    finally:
        session.tear_down(failed=env is None or request.session.testsfailed > 0)


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
def postgres(e2e: E2E) -> Iterator[PgCluster]:
    """A real PostgreSQL (primary + synchronous standby, testkit.pg) on an address of this
    machine that the cluster's pods reach (the provider's `host_address`; never a wildcard),
    taking password logins from the pods' source ranges only."""
    if not e2e.cluster.host_address:
        pytest.fail(f"the {e2e.cluster.provider} provider names no address pods can reach")
    with PgCluster(standby=True, fsync=False, listen=(e2e.cluster.host_address,),
                   client_networks=e2e.cluster.pod_sources) as cluster:
        yield cluster


def postgres_dsn(e2e: E2E, pg: PgCluster, database: str) -> str:
    """A login and a database of their own, and the DSN a store pod uses to reach them: a
    libpq multi-host DSN naming the primary and the standby, of which libpq takes the one
    that accepts writes (`target_session_attrs=read-write`) -- as a production DSN does
    when no proxy or DNS name follows the primary, and what lets a store follow a
    promotion (e2e/test_79_store_failover.py)."""
    password = secrets.token_urlsafe(18)
    pg.create_login(database, password, database, grants=("pg_monitor",))
    nodes = [pg.primary, *([pg.standby] if pg.standby else [])]
    hosts = ",".join(e2e.cluster.host_address for _ in nodes)
    ports = ",".join(str(node.port) for node in nodes)
    return (f"host={hosts} port={ports} target_session_attrs=read-write dbname={database} "
            f"user={database} password={password} sslmode=disable connect_timeout=5")


POSTGRES_STORE = "pg-suppressions"
POSTGRES_STORE_DATABASE = "e2e_pg_store"


@pytest.fixture(scope="session")
def postgres_store(e2e: E2E, postgres: PgCluster) -> str:
    """examples/unsubscribestore.yaml's store, renamed into the e2e namespace, on its own
    database and login (e2e/test_40_unsubscribe.py, e2e/test_79_store_failover.py)."""
    from e2e.test_15_examples import secret_from_files

    doc = example("unsubscribestore.yaml")
    assert doc and doc["spec"]["storage"]["type"] == "postgres"
    doc["metadata"] = {"name": POSTGRES_STORE}
    dsn = doc["spec"]["storage"]["postgres"]["dsnSecretRef"]
    dsn["name"] = f"{POSTGRES_STORE}-dsn"
    secret_from_files(e2e.kube, dsn["name"], {dsn["key"]: postgres_dsn(e2e, postgres,
                                                                        POSTGRES_STORE_DATABASE)})
    resubscribe = doc["spec"]["resubscribe"]["secretRef"]
    resubscribe["name"] = f"{POSTGRES_STORE}-resubscribe"
    secret_from_files(e2e.kube, resubscribe["name"],
                      {resubscribe.get("key", "token"): "e2e-resubscribe-credential"})
    e2e.kube.apply(doc)
    return POSTGRES_STORE


@pytest.fixture(scope="session")
def store_name(e2e: E2E) -> str:
    if e2e.store is None:
        pytest.skip("examples/unsubscribestore-dev.yaml is not in this checkout "
                    "(the UnsubscribeStore resource has not landed yet)")
    return e2e.store
