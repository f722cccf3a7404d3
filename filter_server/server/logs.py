"""Structured JSON logs on stderr: one object per line with time, level, logger, message and
any `extra=` fields (request_id, policy_hash, worker ...), ready for a log pipeline.

Every field of a line is cut to a bounded length. A message that breaks the server in a new
way must not also flood its log: a RecursionError deep in the stdlib address parser
(issue 20, item 10) logged a 370 KB traceback per message, and a log pipeline that drops
or splits long lines would lose exactly the line that says what went wrong. A traceback
keeps its start and its end (where the exception is named); other fields keep their start.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

try:  # python-json-logger >= 3
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - python-json-logger 2.x
    from pythonjsonlogger.jsonlogger import JsonFormatter

LOGGER_NAME = "mailwarden.filter"

# A traceback of a few dozen frames is 5-10 KB; 16 KB keeps every ordinary one whole.
MAX_TRACEBACK_CHARS = 16 * 1024
# Messages and extra fields are short by construction; this only stops caller text that
# slipped into one from making a line of megabytes.
MAX_FIELD_CHARS = 4096


def cut_middle(text: str, limit: int) -> str:
    """`text` whole if it is at most `limit` characters, else its first and last parts
    around a note of how much was left out (at most `limit` characters in all)."""
    if len(text) <= limit:
        return text
    note = f"\n... {len(text) - limit:,} characters left out ...\n"
    keep = max(0, limit - len(note))
    head = keep // 4
    return text[:head] + note + text[len(text) - (keep - head):]


def cut_end(text: str, limit: int) -> str:
    """`text` whole if it is at most `limit` characters, else its start and a note."""
    if len(text) <= limit:
        return text
    note = f"... ({len(text):,} characters)"
    return text[:max(0, limit - len(note))] + note


class BoundedJsonFormatter(JsonFormatter):
    """JSON lines whose fields are cut to MAX_TRACEBACK_CHARS / MAX_FIELD_CHARS."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return cut_middle(logging.Formatter.formatException(self, ei), MAX_TRACEBACK_CHARS)

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return cut_middle(stack_info, MAX_TRACEBACK_CHARS)

    def process_log_record(self, log_record: dict[str, Any]) -> dict[str, Any]:
        for key, value in log_record.items():
            if isinstance(value, str) and key not in ("exc_info", "stack_info"):
                log_record[key] = cut_end(value, MAX_FIELD_CHARS)
        return log_record


def setup_logging(level: str, **static_fields: object) -> logging.Logger:
    """Route every log record of this process to stderr as JSON; returns the filter logger.

    `static_fields` (e.g. worker=2) are added to every line so lines from several worker
    processes can be told apart."""
    formatter = BoundedJsonFormatter(
        "{asctime}{levelname}{name}{message}", style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        static_fields=static_fields, datefmt="%Y-%m-%dT%H:%M:%S%z")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return logging.getLogger(LOGGER_NAME)
