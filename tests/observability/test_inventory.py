"""Every metric a running component exports is in the inventory of docs/observability.md,
listed under that component, and every inventory row of a component is really exported.

Real processes: an unsubscribe store (`mailwarden unsubscribe-server`, embedded SQLite), a
filter server (`mailwarden serve`, two workers, `--suppression-store` pointing at it) and
the operator (`mailwarden operator`, kopf) against the KMock emulator with one SpamPolicy
reconciled — each scraped over HTTP on its metrics port after some real traffic."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailwarden.filter.v1 import filter_pb2
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as upb
from tests.observability.inventory import Inventory, load_inventory
from tests.operator.conftest import (Cluster, FakeDeploymentController, OperatorProcess,
                                     example_policy, model_configmap, wait_for)
from tests.operator.emulator import EmulatorThread
from testkit.filter import Server, mini_policy, write_policy
from testkit.store import StoreProcess

MESSAGE = b"From: news@shop.example\nTo: list@shop.example\nSubject: Weekly\n\nOffers.\n"


def exported(text: str) -> dict[str, str]:
    """Metric family names (as written in the exposition: counters with `_total`) -> type."""
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name
        if family.type == "counter" and not name.endswith("_total"):
            name += "_total"
        out[name] = family.type
    return out


def sample(text: str, metric: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as rsp:
        return rsp.read().decode()


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    return load_inventory()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inventory")


@pytest.fixture(scope="module")
def store(workdir: Path) -> Iterator[StoreProcess]:
    proc = StoreProcess(workdir, ["--store", "sqlite", "--sqlite-path",
                                  str(workdir / "store.db"), "--no-one-click"])
    try:
        yield proc.start()
    finally:
        proc.close()


@pytest.fixture(scope="module")
def filter_metrics(workdir: Path, store: StoreProcess) -> dict[str, str]:
    """Both ways filter pods run: one worker in-process (default registry, process metrics)
    and several workers (prometheus-client's multiprocess mode); the union of both."""
    policy_dir = workdir / "policy"
    write_policy(policy_dir, mini_policy(1))
    names: dict[str, str] = {}
    for workers in (1, 2):
        server = Server(workdir, policy_dir, ["--suppression-store", store.target,
                                              "--drain-seconds", "0", "--spamd-port", "0"],
                        workers=workers)
        try:
            server.wait_serving()
            _traffic(store, server)
            wait_for(lambda: server.metric(
                "mailwarden_filter_suppression_propagation_seconds_count") >= 1, 10,
                "the propagation histogram")
            names.update(exported(server.metrics_text()))
        finally:
            server.kill()
    return names


@pytest.fixture(scope="module")
def operator_metrics(workdir: Path) -> Iterator[str]:
    with EmulatorThread() as emulator:
        cluster = Cluster(emulator)
        from mailwarden_operator.common.kube import CONFIGMAPS, SPAMPOLICIES
        cluster.kube.create(CONFIGMAPS, "mail", model_configmap("mail"))
        with FakeDeploymentController(cluster.kube):
            proc = OperatorProcess(cluster, workdir)
            try:
                proc.start()
                cluster.kube.create(SPAMPOLICIES, "mail", example_policy("mail", "default"))
                wait_for(lambda: sample(scrape(proc.metrics_port),
                                        "mailwarden_operator_policy_ready",
                                        {"namespace": "mail", "name": "default"}) == 1,
                         90, "the SpamPolicy to be reconciled and Ready")
                yield scrape(proc.metrics_port)
            finally:
                proc.stop()


def _traffic(store: StoreProcess, filter_server: Server) -> None:
    """An unsubscribe (a change the filter applies: the propagation histogram), then
    Classify until the recipient shows as suppressed."""
    address = f"{uuid.uuid4().hex[:12]}@x.example"
    response = store.stub().Unsubscribe(upb.UnsubscribeRequest(
        address=address, scope="weekly", reason=upb.UNSUBSCRIBE, source="test",
        idempotency_key=address), timeout=10)
    assert response.sequence >= 1

    def suppressed() -> bool:
        request = filter_pb2.ClassifyRequest(
            request_id=uuid.uuid4().hex, message=MESSAGE, list_scope="weekly",
            mail_class=filter_pb2.BULK,
            envelope=filter_pb2.Envelope(mail_from="news@shop.example", recipients=[address]))
        return list(filter_server.stub().Classify(request, timeout=10)
                    .suppressed_recipients) == [address]

    wait_for(suppressed, 30, "the unsubscribe to reach Classify")
    # and one message over a mail-server protocol (the protocol metrics)
    sock = socket.create_connection(("127.0.0.1", filter_server.ports["spamd_port"]), 10)
    sock.sendall(b"CHECK SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(MESSAGE) + MESSAGE)
    assert sock.recv(100).startswith(b"SPAMD/1.5 0 EX_OK")
    sock.close()


@pytest.fixture(scope="module")
def store_metrics(store: StoreProcess, filter_metrics: dict[str, str]) -> dict[str, str]:
    """Scraped after the filters' traffic (writes, acks and Watch streams happened)."""
    ports = json.loads((store.workdir / f"{store.name}.ports").read_text())
    return exported(scrape(ports["metrics"]))


@pytest.fixture(scope="module")
def scraped(filter_metrics: dict[str, str], store_metrics: dict[str, str],
            operator_metrics: str) -> dict[str, dict[str, str]]:
    return {"filter": filter_metrics, "store": store_metrics,
            "operator": exported(operator_metrics)}


@pytest.mark.parametrize("component", ["filter", "store", "operator"])
def test_every_exported_metric_is_in_the_inventory(component: str, scraped: dict,
                                                   inventory: Inventory) -> None:
    names = scraped[component]
    assert names, f"nothing scraped from the {component}"
    listed = inventory.of(component)
    missing = sorted(n for n in names if n not in listed)
    assert not missing, (f"exported by the {component} but not in docs/observability.md's "
                         f"inventory (as component `{component}`): {missing}")
    wrong_type = sorted(n for n, kind in names.items() if listed[n].type != kind)
    assert not wrong_type, f"inventory types differ from the exposition: {wrong_type}"


@pytest.mark.parametrize("component", ["filter", "store", "operator"])
def test_every_inventory_row_is_exported(component: str, scraped: dict,
                                         inventory: Inventory) -> None:
    phantom = sorted(set(inventory.of(component)) - set(scraped[component]))
    assert not phantom, f"listed for the {component} but never exported: {phantom}"


def test_names_follow_prometheus_conventions(inventory: Inventory) -> None:
    for name, metric in inventory.items():
        if metric.components & {"kube-state-metrics"}:
            continue
        assert metric.type in ("counter", "gauge", "histogram"), name
        if metric.type == "counter":
            assert name.endswith("_total"), f"{name}: counters end in _total"
        else:
            assert not name.endswith("_total"), f"{name}: only counters end in _total"
        if metric.type == "histogram":
            assert re.search(r"_(seconds|bytes)$", name), f"{name}: histogram without a unit"
        # base units only
        assert not re.search(r"_(milliseconds|ms|microseconds|minutes|hours|kilobytes|"
                             r"megabytes|kb|mb)(_|$)", name), f"{name}: not a base unit"
        # bounded label sets: no per-request or per-address labels
        assert not set(metric.labels) & {"address", "recipient", "request_id", "token",
                                         "email", "sender", "ip"}, name
