"""Hot reload of policies built to exhaust the server (issue 20, item 12): a 421-byte YAML
alias bomb (1.25-2.2 GB and a 312 MB log line before), nesting 5,000 levels deep (a
RecursionError), a gzip-bomb model (2.2 GB). A real server rejects each as a bad new
version — one short log line, the reload-failure metric, memory barely moving — and keeps
serving its previous policy."""

from __future__ import annotations

import gzip
from pathlib import Path

from filter_server.bayes.model import MAX_MODEL_JSON_BYTES
from testkit.filter import HAM, mini_policy, policy_bytes, wait_for, write_policy
from tests.filter_server.server.test_memory import PeakRss
from tests.filter_server.policy.test_policy_limits import BOMB

MIB = 1024 * 1024


def test_costly_policies_are_rejected_by_hot_reload_in_bounded_memory(
        servers, policy_dir: Path) -> None:
    server = servers(policy_dir, "--policy-poll-seconds", "0.2").wait_serving()
    serving = server.classify(HAM).policy_hash
    model_bomb = gzip.compress(b"{" + b" " * (MAX_MODEL_JSON_BYTES * 4) + b"}", 9)
    with_model = mini_policy(2)
    with_model["model"] = {"file": "model.json.gz"}
    versions = {
        "alias bomb": (BOMB, None, "YAML aliases expand the document"),
        "deep nesting": ("rules: " + "[" * 5000 + "]" * 5000 + "\n", None,
                         "nested more than 64 levels deep"),
        "gzip-bomb model": (policy_bytes(with_model).decode(), {"model.json.gz": model_bomb},
                            "decompresses to more than"),
    }
    peaks = {}
    for failures, (name, (text, extra, reason)) in enumerate(versions.items(), start=1):
        log_before = len(server.log())
        with PeakRss(server.process.pid) as rss:
            write_policy(policy_dir, text, extra)
            wait_for(lambda: server.metric(
                "mailwarden_filter_policy_reload_failures_total") == failures, 60,
                f"the {name} to be rejected")
        peaks[name] = rss.peak
        new_log = server.log()[log_before:]
        print(f"\n{name}: peak RSS {rss.peak / MIB:.0f} MiB, log grew {len(new_log):,} bytes")
        assert reason in new_log
        assert len(new_log) < 4000, new_log[:500]
        assert rss.peak < 250 * MIB, f"{name}: peak RSS {rss.peak / MIB:.0f} MiB"
        assert server.classify(HAM).policy_hash == serving
        assert server.health() == "SERVING"
    assert "Traceback" not in server.log()
