"""The wire constants (`mailwarden.wire`) are what each side actually uses: the services the
protos define, the ports the operator renders and the servers default to, the metric names
the filter server exports and the operator and local mode read."""

from __future__ import annotations

from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from mailwarden import wire
from mailwarden.cli import build_parser
from mailwarden.filter.v1 import filter_pb2
from mailwarden.unsubscribe.v1 import unsubscribe_pb2

REPO = Path(__file__).resolve().parents[2]


def test_service_names_are_the_protos() -> None:
    assert wire.FILTER_SERVICE == filter_pb2.DESCRIPTOR.services_by_name["Filter"].full_name
    assert wire.UNSUBSCRIBE_SERVICE == \
        unsubscribe_pb2.DESCRIPTOR.services_by_name["UnsubscribeStore"].full_name


def _container(kind_doc: dict) -> dict:
    return kind_doc["spec"]["template"]["spec"]["containers"][0]


def test_servers_listen_by_default_where_the_operator_renders_their_ports() -> None:
    """`mailwarden serve` started by hand answers where clients of a rendered filter pod
    look (the rendered Service and probes use the containerPorts)."""
    from mailwarden_operator.common.render import RenderSettings
    from mailwarden_operator.spampolicy.render.deployment import render_deployment
    from mailwarden_operator.spampolicy.spec import with_defaults
    from mailwarden_operator.unsubscribestore.render.deployment import render_store_deployment
    from mailwarden_operator.unsubscribestore.spec import with_defaults as store_defaults

    policy = yaml.safe_load((REPO / "examples" / "spampolicy.yaml").read_text())
    policy["metadata"].update(uid="u", namespace="ns")
    policy["spec"] = with_defaults(policy["spec"])
    filter_ports = {p["name"]: p["containerPort"] for p in
                    _container(render_deployment(policy, "h", RenderSettings()))["ports"]}
    serve = build_parser().parse_args(["serve", "--policy-dir", "p"])
    assert (serve.grpc_port, serve.metrics_port) == \
        (filter_ports["grpc"], filter_ports["metrics"]) == \
        (wire.FILTER_GRPC_PORT, wire.FILTER_METRICS_PORT)

    store = {"metadata": {"name": "s", "namespace": "ns", "uid": "u"},
             "spec": store_defaults({"storage": {"type": "postgres", "postgres": {
                 "dsnSecretRef": {"name": "pg"}}}})}
    store_ports = {p["name"]: p["containerPort"] for p in
                   _container(render_store_deployment(store, RenderSettings(), {}))["ports"]}
    server = build_parser().parse_args(["unsubscribe-server"])
    client = build_parser().parse_args(["unsubscribe", "status"])
    assert server.grpc_address == f"0.0.0.0:{store_ports['grpc']}"
    assert server.http_address == f"0.0.0.0:{store_ports['http']}"
    assert server.metrics_address == f"0.0.0.0:{store_ports['metrics']}"
    assert client.target.endswith(f":{store_ports['grpc']}")


def test_the_filter_exports_the_metrics_others_read() -> None:
    from filter_server.server.metrics import FilterMetrics

    registry = CollectorRegistry()
    FilterMetrics(registry)
    exported = {sample.name for family in registry.collect() for sample in family.samples}
    exported |= {family.name for family in registry.collect()}
    for name in (wire.SUPPRESSION_CACHE_FRESH, wire.SUPPRESSION_CACHE_AGE_SECONDS,
                 wire.SUPPRESSION_CACHE_CONNECTED, wire.SUPPRESSION_CACHE_LAG_SEQUENCES,
                 wire.FILTER_REQUESTS_TOTAL, wire.FILTER_POLICY_INFO):
        assert name in exported, name


def test_the_operator_renders_the_memory_limit_variable_the_server_reads() -> None:
    from filter_server.server.memory import container_memory_limit

    assert container_memory_limit({wire.MEMORY_LIMIT_ENV: "1048576"}) == 1048576
