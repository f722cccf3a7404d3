"""The one error local mode reports (instead of a traceback)."""

from __future__ import annotations


class LocalError(Exception):
    """Local mode cannot go on; the message says why and what to do."""
