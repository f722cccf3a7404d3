"""A log line stays bounded whatever the failure (issue 20, item 10: a From of ~500 "("
raised RecursionError in the stdlib address parser and logged a 370 KB traceback per
message). The parser no longer recurses on such input (message.address_of), but the next
unforeseen failure must not flood the log either: each field of a line is cut, a
traceback keeping its first frames and the exception's name."""

from __future__ import annotations

import io
import json
import logging
from email import _header_value_parser
from typing import Iterator

import pytest

from filter_server.server import logs


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the server's logging writes, once `setup` is called (as the server does)."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def setup(stream: io.StringIO, **static_fields: object) -> logging.Logger:
    log = logs.setup_logging("INFO", **static_fields)
    handler, = logging.getLogger().handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    return log


def test_a_deep_recursion_logs_a_bounded_line(log_lines: io.StringIO) -> None:
    log = setup(log_lines, worker=0)
    try:  # what the server's address parsing did with a From of 500 "("
        _header_value_parser.get_address_list("(" * 500)
    except RecursionError:
        log.exception("classification failed", extra={"request_id": "r1"})
    else:
        pytest.skip("this Python's address parser does not recurse on nested comments")
    line = log_lines.getvalue()
    record = json.loads(line)
    print(f"\n{len(line):,} characters")
    assert len(line) < logs.MAX_TRACEBACK_CHARS + 1024
    assert record["message"] == "classification failed" and record["request_id"] == "r1"
    trace = record["exc_info"]
    assert trace.startswith("Traceback (most recent call last):")
    assert "get_address_list" in trace  # where it started
    assert "characters left out" in trace
    assert trace.rstrip().splitlines()[-1].startswith("RecursionError")  # what it was


def test_caller_text_in_a_message_or_field_is_cut(log_lines: io.StringIO) -> None:
    log = setup(log_lines)
    log.warning("refused %s", "x" * 5_000_000, extra={"request_id": "y" * 5_000_000})
    line = log_lines.getvalue()
    record = json.loads(line)
    assert len(line) < 3 * logs.MAX_FIELD_CHARS
    assert record["message"].startswith("refused xxx")
    assert record["message"].endswith("(5,000,008 characters)")
    assert len(record["request_id"]) <= logs.MAX_FIELD_CHARS


def test_ordinary_lines_are_unchanged(log_lines: io.StringIO) -> None:
    log = setup(log_lines, worker=2)
    try:
        {}["missing"]
    except KeyError:
        log.exception("lookup failed", extra={"request_id": "abc"})
    record = json.loads(log_lines.getvalue())
    assert record["message"] == "lookup failed" and record["worker"] == 2
    assert "left out" not in record["exc_info"]
    assert record["exc_info"].endswith("KeyError: 'missing'")
