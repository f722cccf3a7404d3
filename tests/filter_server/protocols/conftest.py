"""One real `mailwarden serve` with all three protocol ports per test module."""

from __future__ import annotations

import pytest

from testkit.protocols import start_server

IDLE_SECONDS = 1.5
MAX_MESSAGE_BYTES = 200_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = start_server(tmp_path_factory.mktemp("protocols"),
                           "--protocol-idle-seconds", str(IDLE_SECONDS),
                           "--max-message-bytes", str(MAX_MESSAGE_BYTES))
    yield started
    started.kill()
