"""The Grafana dashboard (charts/mailwarden/files/dashboard.json) and its ConfigMap: the
JSON parses, every query is valid PromQL (promtool) and reads only metrics of the inventory
(docs/observability.md) or the chart's recording rules, it covers what operators look at,
and the chart ships it in a valid ConfigMap with Grafana's sidecar label."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.observability.chart import CHART, by_kind, promtool, render, rendered_rules
from tests.observability.inventory import load_inventory
from tests.observability.promql import metric_names, without_grafana_variables
from tests.operator.k8s_schemas import validate_k8s

DASHBOARD = CHART / "files" / "dashboard.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable's selector."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) \
            else variable["query"]
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: expected label_values(selector, label)"
        out.append((f"variable {variable['name']}", match.group(1)))
    return out


def test_the_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "mailwarden-overview" and dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']}: no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            for name in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert name.startswith("__") or name in variables, \
                    f"{panel['title']}: unknown variable ${name}"


def test_every_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query:{i}", "expr": without_grafana_variables(expr)}
        for i, (_, expr) in enumerate(queries(dashboard))]}]}
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(rules))
    out = promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_query_reads_metrics_that_exist(dashboard: dict[str, Any]) -> None:
    known = load_inventory().series_names()
    recorded = {rule["record"] for group in rendered_rules()["groups"]
                for rule in group["rules"] if "record" in rule}
    unknown = {}
    for where, expr in queries(dashboard):
        missing = metric_names(expr) - known - recorded
        if missing:
            unknown[where] = sorted(missing)
    assert not unknown, f"queries name metrics that are in no inventory: {unknown}"


def test_it_covers_what_operators_look_at(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(e) for _, e in queries(dashboard)))
    for topic, names in {
        "traffic": {"mailwarden_filter_requests_total"},
        "latency": {"mailwarden_filter_classify_duration_seconds_bucket"},
        "verdict mix": {"mailwarden_filter_verdicts_total"},
        "policy hash per pod": {"mailwarden_filter_policy_info"},
        "rollout progress": {"kube_deployment_status_replicas_updated",
                             "mailwarden_operator_spampolicy_condition"},
        "unsubscribe rate": {"mailwarden_unsubscribe_writes_total",
                             "mailwarden_unsubscribe_oneclick_total"},
        "replication": {"mailwarden_unsubscribe_replication_lag_seconds",
                        "mailwarden_unsubscribe_sync_standbys"},
        "suppression lag": {"mailwarden_filter_suppression_cache_lag_sequences",
                            "mailwarden_filter_suppression_cache_age_seconds",
                            "mailwarden_filter_suppression_propagation_seconds_bucket"},
    }.items():
        assert names <= used, f"{topic}: the dashboard does not show {names - used}"


def test_the_chart_ships_it_in_a_configmap_for_the_sidecar(dashboard: dict[str, Any]
                                                            ) -> None:
    configmaps = [cm for cm in by_kind(render(), "ConfigMap")
                  if cm["metadata"]["name"] == "mw-mailwarden-dashboard"]
    assert len(configmaps) == 1
    cm = configmaps[0]
    validate_k8s(cm)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["mailwarden.json"]) == dashboard
    assert len(json.dumps(cm)) < 1024 * 1024  # a ConfigMap holds at most 1 MiB
    folder = by_kind(render("--set", "monitoring.dashboard.annotations.grafana_folder=Mail"),
                     "ConfigMap")
    assert any((c["metadata"].get("annotations") or {}).get("grafana_folder") == "Mail"
               for c in folder)
    assert not [c for c in by_kind(render("--set", "monitoring.dashboard.enabled=false"),
                                   "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
