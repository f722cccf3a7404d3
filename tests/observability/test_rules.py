"""The chart's alert and recording rules: rendered by real helm from files/alerts.yaml,
checked by `promtool check rules`, unit-tested by `promtool test rules` (rules_test.yaml:
every alert fires on a synthetic series and stays quiet on a healthy one), and the
PrometheusRule validated against the Prometheus Operator's CRD schema."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from filter_server.server.metrics import LATENCY_BUCKETS, PROPAGATION_BUCKETS
from tests.observability.chart import (CHART, PROMETHEUS_RULE_API, by_kind, helm_template,
                                       promtool, render, rendered_rules)
from tests.observability.inventory import load_inventory
from tests.observability.prometheus_rule import validate_prometheus_rule
from tests.observability.promql import metric_names

HERE = Path(__file__).resolve().parent
UNIT_TESTS = HERE / "rules_test.yaml"


def alerts(spec: dict) -> list[str]:
    return [rule["alert"] for group in spec["groups"] for rule in group["rules"]
            if "alert" in rule]


@pytest.fixture(scope="module")
def default_rules() -> dict:
    return rendered_rules()


@pytest.fixture(scope="module")
def rules_dir(default_rules: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rules")
    (directory / "rendered.yaml").write_text(yaml.safe_dump(default_rules, sort_keys=False))
    # The unit tests compare labels; promtool would also demand every annotation verbatim.
    bare = copy.deepcopy(default_rules)
    for group in bare["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (directory / "rules.yaml").write_text(yaml.safe_dump(bare, sort_keys=False))
    shutil.copy(UNIT_TESTS, directory / "rules_test.yaml")
    return directory


def test_promtool_accepts_the_rules(rules_dir: Path) -> None:
    out = promtool("check", "rules", "rendered.yaml", cwd=rules_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_pass(rules_dir: Path) -> None:
    out = promtool("test", "rules", "rules_test.yaml", cwd=rules_dir)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_fires_in_one_case_and_stays_quiet_in_another(default_rules: dict) -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts(default_rules))
    assert names - fires == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet on healthy series"
    assert (fires | quiet) - names == set(), "tests name alerts that do not exist"


def test_the_issue_list_is_covered(default_rules: dict) -> None:
    """Each alert the observability issue asks for exists (by name)."""
    wanted = {
        "MailwardenClassifyErrorRatioHigh", "MailwardenClassifyLatencyP99High",
        "MailwardenReplicasBelowDisruptionBudget", "MailwardenPolicyRolloutStuck",
        "MailwardenPolicyInvalid", "MailwardenUnsubscribeAckLatencyHigh",
        "MailwardenUnsubscribeReplicationLagHigh", "MailwardenUnsubscribeNoSynchronousStandby",
        "MailwardenSuppressionCacheLagging", "MailwardenSuppressionCacheStale",
        "MailwardenSuppressionWatchDisconnected",
        "MailwardenUnsubscribeNotVisibleInComplianceWindow",
    } | {f"Mailwarden{slo}BudgetBurn{speed}" for slo in
         ("ClassifyAvailability", "ClassifyLatency", "UnsubscribeAvailability",
          "SuppressionVisibility") for speed in ("Fast", "Slow")}
    assert wanted <= set(alerts(default_rules))


def test_every_alert_has_severity_summary_and_a_runbook_that_exists(default_rules: dict
                                                                     ) -> None:
    doc = (CHART.parents[1] / "docs" / "observability.md").read_text()
    headings = {line[4:].strip() for line in doc.splitlines() if line.startswith("### ")}
    for group in default_rules["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
            assert anchor == rule["alert"].lower()
            assert rule["alert"] in headings, f"docs/observability.md has no ### {rule['alert']}"


def test_the_prometheus_rule_validates_against_the_crd_schema(default_rules: dict) -> None:
    doc = by_kind(render(*PROMETHEUS_RULE_API), "PrometheusRule")[0]
    validate_prometheus_rule(doc)
    assert doc["metadata"]["namespace"] == "mail-system"


def test_the_validator_rejects_a_broken_rule() -> None:
    doc = by_kind(render(*PROMETHEUS_RULE_API), "PrometheusRule")[0]
    doc["spec"]["groups"][0]["rules"][0]["fro"] = "5m"  # a typo of `for`
    with pytest.raises(ValueError, match="fro"):
        validate_prometheus_rule(doc)
    doc["spec"]["groups"][0]["rules"][0].pop("fro")
    doc["spec"]["groups"][-1]["rules"][0]["for"] = "ten minutes"
    with pytest.raises(ValueError, match="for"):
        validate_prometheus_rule(doc)


@pytest.mark.parametrize("args, rendered", [
    ((), False),                                             # no PrometheusRule API
    (PROMETHEUS_RULE_API, True),                             # auto, API present
    (("--set", "monitoring.prometheusRule.enabled=true"), True),
    ((*PROMETHEUS_RULE_API, "--set", "monitoring.prometheusRule.enabled=false"), False),
], ids=["auto-absent", "auto-present", "forced-on", "forced-off"])
def test_rendered_only_when_the_api_exists_or_forced(args: tuple[str, ...], rendered: bool
                                                      ) -> None:
    assert bool(by_kind(render(*args), "PrometheusRule")) is rendered


def test_values_reach_the_rules() -> None:
    spec = rendered_rules("--set", "monitoring.slo.classifyAvailability=0.995",
                          "--set", "monitoring.slo.classifyLatencySeconds=0.05",
                          "--set", "monitoring.alerts.unsubscribeComplianceWindowSeconds=86400",
                          "--set", "monitoring.alerts.rolloutStuckFor=1h",
                          "--set", "monitoring.prometheusRule.labels.release=kps")
    by_name = {r.get("alert") or r.get("record"): r for g in spec["groups"] for r in g["rules"]}
    text = "\n".join(r["expr"] for r in by_name.values())
    burn = by_name["MailwardenClassifyAvailabilityBudgetBurnFast"]["expr"]
    assert "(1 - 0.995)" in burn and "(1 - 0.999)" not in burn
    assert 'le="0.05"' in text and 'le="0.1"' not in text
    assert 'le="86400.0"' in text and "> 86400" in text
    assert by_name["MailwardenPolicyRolloutStuck"]["for"] == "1h"
    doc = by_kind(render(*PROMETHEUS_RULE_API, "--set", "monitoring.prometheusRule.labels."
                         "release=kps"), "PrometheusRule")[0]
    assert doc["metadata"]["labels"]["release"] == "kps"


@pytest.mark.parametrize("setting, message", [
    ("monitoring.slo.classifyLatencySeconds=0.3",
     "classifyLatencySeconds must be a bucket bound"),
    ("monitoring.alerts.unsubscribeComplianceWindowSeconds=100000",
     "unsubscribeComplianceWindowSeconds must be a bucket bound"),
    ("monitoring.slo.classifyAvailability=99.9", "classifyAvailability must be a fraction"),
    ("monitoring.alerts.rolloutStuckFor=soon", "rolloutStuckFor must be a Prometheus duration"),
])
def test_bad_values_are_refused_with_a_clear_message(setting: str, message: str) -> None:
    out = helm_template(*PROMETHEUS_RULE_API, "--set", setting)
    assert out.returncode != 0
    assert message in out.stderr


def _template_list(name: str) -> list[str]:
    text = (CHART / "templates" / "prometheusrule.yaml").read_text()
    match = re.search(r"\$" + name + r" := list ((?:\"[^\"]+\" ?)+)", text)
    assert match, name
    return re.findall(r'"([^"]+)"', match.group(1))


def _go_float(value: float) -> str:
    # prometheus-client's `le` label formatting
    from prometheus_client.utils import floatToGoString
    return floatToGoString(value)


def test_the_templates_bucket_lists_match_the_histograms() -> None:
    assert _template_list("latencyBuckets") == [_go_float(b) for b in LATENCY_BUCKETS]
    assert _template_list("propagationBuckets") == [_go_float(b) for b in PROPAGATION_BUCKETS]


def test_the_alert_rules_read_metrics_that_exist() -> None:
    """Every name an expression reads is in docs/observability.md's inventory (a component's
    metric or a documented kube-state-metrics one) or is one of the chart's recording
    rules."""
    known = load_inventory().series_names()
    spec = rendered_rules()
    recorded = {r["record"] for g in spec["groups"] for r in g["rules"] if "record" in r}
    for group in spec["groups"]:
        for rule in group["rules"]:
            missing = metric_names(rule["expr"]) - known - recorded
            assert not missing, f"{rule.get('alert') or rule.get('record')}: {missing}"
