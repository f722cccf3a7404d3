"""Shadow evaluation (issue 18): a candidate policy judges a sample of traffic next to the
live one, never answering, with its CPU bounded; the comparison is exported as metrics."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from filter_server.engine.compiled import CompiledPolicy, Envelope
from filter_server.policy.loader import load_policy_dir
from filter_server.server.shadow import CpuBucket, ShadowEvaluator, ShadowMetrics, direction
from mailwarden.filter.v1 import filter_pb2
from testkit.filter import HAM, SPAM, mini_policy, wait_for, write_policy

LOG = logging.getLogger("test")


def candidate_policy() -> dict:
    """mini_policy(1) with BODY_VIAGRA no longer matching viagra (spam: QUARANTINE -> TAG)
    and a new rule that rejects the ham's lunch invitation (ham: ACCEPT -> REJECT)."""
    policy = copy.deepcopy(mini_policy(1))
    policy["rules"][1]["pattern"] = r"(?i)\bcialis\b"
    policy["rules"].append({"name": "LUNCH", "target": "body", "pattern": "noon",
                            "score": 25})
    return policy


@pytest.fixture
def live_and_shadow(tmp_path: Path) -> tuple[CompiledPolicy, Path]:
    write_policy(tmp_path / "live", mini_policy(1))
    write_policy(tmp_path / "shadow", candidate_policy())
    return CompiledPolicy(load_policy_dir(tmp_path / "live")), tmp_path / "shadow"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_verdicts_compare_by_direction_and_rule(live_and_shadow) -> None:
    live, shadow_dir = live_and_shadow
    registry = CollectorRegistry()
    shadow = ShadowEvaluator(shadow_dir, ShadowMetrics(registry), LOG)
    assert shadow.reload_if_changed()
    envelope = Envelope(mail_from="x@example.com")
    for raw in (SPAM, HAM, HAM):
        shadow.evaluate(raw, envelope, None, live.classify(raw, envelope))
    verdicts = "mailwarden_shadow_verdicts_total"
    assert sample(registry, verdicts, live_action="QUARANTINE", shadow_action="TAG",
                  direction="laxer") == 1
    assert sample(registry, verdicts, live_action="ACCEPT", shadow_action="REJECT",
                  direction="stricter") == 2
    changes = "mailwarden_shadow_rule_changes_total"
    assert sample(registry, changes, rule="LUNCH", change="added", direction="stricter") == 2
    assert sample(registry, changes, rule="BODY_VIAGRA", change="removed",
                  direction="laxer") == 1
    assert sample(registry, changes, rule="MONEY_AND_PILLS", change="removed",
                  direction="laxer") == 1
    assert sample(registry, "mailwarden_shadow_cpu_seconds_total") > 0
    assert sample(registry, "mailwarden_shadow_policy_info",
                  hash=shadow.current.hash) == 1


def test_sampling_cpu_and_queue_bounds(live_and_shadow) -> None:
    live, shadow_dir = live_and_shadow
    registry = CollectorRegistry()
    now = [0.0]
    coin = [0.5]
    shadow = ShadowEvaluator(shadow_dir, ShadowMetrics(registry), LOG, sample_rate=0.25,
                             cpu_fraction=0.1, queue_bytes=len(HAM) * 2,
                             chance=lambda: coin[0], clock=lambda: now[0])
    verdict = live.classify(HAM)
    skipped = "mailwarden_shadow_skipped_total"
    shadow.offer(HAM, Envelope(), None, verdict)      # no policy loaded yet... but unsampled
    assert sample(registry, skipped, reason="no-policy") == 0
    coin[0] = 0.1
    shadow.offer(HAM, Envelope(), None, verdict)
    assert sample(registry, skipped, reason="no-policy") == 1
    shadow.reload_if_changed()
    shadow.offer(HAM, Envelope(), None, verdict)
    shadow.offer(HAM, Envelope(), None, verdict)
    shadow.offer(HAM, Envelope(), None, verdict)      # the queue holds two HAMs' bytes
    assert sample(registry, skipped, reason="queue") == 1
    # The CPU bucket: spending more than it holds stops sampling until time refills it.
    bucket = CpuBucket(0.1, clock=lambda: now[0])
    assert bucket.available()
    bucket.spend(1.5)                                  # capacity is 0.1 x 10 s = 1 s
    assert not bucket.available()
    now[0] += 4.0                                      # +0.4 s of CPU: still in debt
    assert not bucket.available()
    now[0] += 2.0
    assert bucket.available()


def test_direction() -> None:
    assert direction("TAG", "REJECT") == "stricter"
    assert direction("REJECT", "ACCEPT") == "laxer"
    assert direction("TAG", "TAG") == "same"


def test_a_serving_pod_answers_live_and_counts_the_shadow(servers, tmp_path: Path) -> None:
    write_policy(tmp_path / "live", mini_policy(1))
    write_policy(tmp_path / "shadow", candidate_policy())
    server = servers(tmp_path / "live", "--shadow-policy-dir", str(tmp_path / "shadow"),
                     "--shadow-sample-rate", "1", "--policy-poll-seconds", "0.2",
                     workers=2).wait_serving()
    live_hash = load_policy_dir(tmp_path / "live").hash
    for _ in range(5):
        assert server.classify(HAM).action == filter_pb2.ACCEPT  # the live policy answers
    answered = server.classify(SPAM)
    assert answered.policy_hash == live_hash
    wait_for(lambda: server.metric("mailwarden_shadow_verdicts_total") == 6, 20,
             "six shadow verdicts")
    assert server.metric("mailwarden_shadow_verdicts_total", direction="stricter") == 5
    assert server.metric("mailwarden_shadow_rule_changes_total", rule="LUNCH",
                         change="added") == 5
    # A new candidate is picked up like a live policy (the kubelet swaps ..data).
    newer = candidate_policy()
    newer["rules"].pop()
    write_policy(tmp_path / "shadow", newer)
    newer_hash = load_policy_dir(tmp_path / "shadow").hash
    wait_for(lambda: server.metric("mailwarden_shadow_policy_info",
                                   hash=newer_hash) == 1, 20, "the new candidate")
    # Each worker reloads on its own poll (the gauge shows the first): keep sending until
    # a worker judging with the new candidate agrees with the live verdict.
    wait_for(lambda: server.classify(HAM) and server.metric(
        "mailwarden_shadow_verdicts_total", direction="same") >= 1, 20,
        "a verdict that agrees")


def test_bad_shadow_settings_are_refused(servers, tmp_path: Path) -> None:
    write_policy(tmp_path / "live", mini_policy(1))
    server = servers(tmp_path / "live", "--shadow-policy-dir", str(tmp_path),
                     "--shadow-sample-rate", "1.5")
    assert server.wait_exit() != 0
    assert "--shadow-sample-rate must be between 0 and 1 (got 1.5)" in server.log()
