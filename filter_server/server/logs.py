"""Structured JSON logs on stderr: one object per line with time, level, logger, message and
any `extra=` fields (request_id, policy_hash, worker ...), ready for a log pipeline."""

from __future__ import annotations

import logging
import sys

try:  # python-json-logger >= 3
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - python-json-logger 2.x
    from pythonjsonlogger.jsonlogger import JsonFormatter

LOGGER_NAME = "mailwarden.filter"


def setup_logging(level: str, **static_fields: object) -> logging.Logger:
    """Route every log record of this process to stderr as JSON; returns the filter logger.

    `static_fields` (e.g. worker=2) are added to every line so lines from several worker
    processes can be told apart."""
    formatter = JsonFormatter(
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
