"""The CPU budget per message (issue 20): a message that would take the parser longer is
classified on what was read when the budget ran out, and says so; ordinary mail never
meets the budget."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from filter_server.engine.compiled import BUDGET_RULE, CompiledPolicy
from filter_server.message import MAX_PARSE_BYTES, parse_message
from filter_server.policy.loader import load_policy_dir
from filter_server.server.config import ServeConfig


def slow_message(size: int = MAX_PARSE_BYTES) -> bytes:
    """Short lines under 30 nested boundaries (the deepest part classification reads):
    every line is compared with every boundary, about 1 µs a byte (4 s for 4 MiB) although
    the parser stays linear. Spam words come first, so what is read in time still scores."""
    head = b"From: bulk@spam.example\r\nSubject: free money\r\n" + b"".join(
        f"Content-Type: multipart/mixed; boundary=\"n{i}\"\r\n\r\n--n{i}\r\n".encode()
        for i in range(30))
    body = b"Content-Type: text/plain\r\n\r\nbuy viagra now\r\n"
    return head + body + b"x\r\n" * ((size - len(head) - len(body)) // 3)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> CompiledPolicy:
    directory: Path = tmp_path_factory.mktemp("budget-policy")
    (directory / "policy.yaml").write_text(yaml.safe_dump({
        "rules": [{"name": "PILLS", "target": "body", "pattern": "(?i)viagra", "score": 2}],
        "metaRules": [{"name": "TOO_COSTLY", "expression": "SCAN_BUDGET_EXCEEDED",
                       "score": 4}]}))
    return CompiledPolicy(load_policy_dir(directory))


def test_a_message_over_the_budget_is_classified_on_what_was_read(policy) -> None:
    started = time.thread_time()
    verdict = policy.classify(slow_message(), cpu_budget_seconds=0.3)
    spent = time.thread_time() - started
    # the budget plus at most one slice of the parser and the steps after it
    assert spent < 0.8, f"{spent:.2f} s of CPU with a 0.3 s budget"
    hits = {h.name: h for h in verdict.hits}
    assert set(hits) == {"PILLS", BUDGET_RULE, "TOO_COSTLY"}
    assert "CPU budget of 0.3 s per message ran out: parsed " in hits[BUDGET_RULE].description
    assert verdict.score == 6.0


def test_without_a_budget_the_whole_message_is_parsed(policy) -> None:
    raw = slow_message(256 * 1024)
    verdict = policy.classify(raw)
    assert BUDGET_RULE not in {h.name for h in verdict.hits}
    assert parse_message(raw).budget_note is None


def test_ordinary_large_mail_stays_far_within_the_default_budget(policy) -> None:
    default = ServeConfig(policy_dir=Path(".")).cpu_budget_seconds
    line = b"Shall we meet at noon? We could walk to the park afterwards and talk.\r\n"
    html = b"<p>Shall we <b>meet</b> at <a href=\"http://x.example/y\">noon</a>?</p>\r\n"
    for raw in (b"From: a@example.com\r\n\r\n" + line * (MAX_PARSE_BYTES // len(line)),
                b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n"
                + html * (MAX_PARSE_BYTES // len(html))):
        started = time.thread_time()
        verdict = policy.classify(raw, cpu_budget_seconds=default)
        spent = time.thread_time() - started
        assert BUDGET_RULE not in {h.name for h in verdict.hits}
        # measured 0.05 and 0.22 s: the default leaves room for a CPU several times slower
        assert spent < default / 2, f"{spent:.2f} s for {len(raw)} bytes of ordinary mail"
