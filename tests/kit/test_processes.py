"""The shared test helpers in `testkit.processes`, against a real HTTP endpoint."""
from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from testkit.processes import scraped_total

EXPOSITION = b"""# HELP mailwarden_operator_policy_valid Whether the policy compiled.
# TYPE mailwarden_operator_policy_valid gauge
mailwarden_operator_policy_valid{name="gone",namespace="a"} 1.0
mailwarden_operator_policy_valid{name="kept",namespace="a"} 1.0
mailwarden_operator_policy_valid{name="gone",namespace="b"} 2.0
mailwarden_operator_policy_valid_total 7.0
"""


@pytest.fixture()
def metrics_url() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(EXPOSITION)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_name_and_url_work_as_label_filters(metrics_url: str) -> None:
    """The operator labels its series with `name`; filtering by it must not clash with
    the helper's own parameters (CI stop 22 failed on exactly that)."""
    assert scraped_total(metrics_url, "mailwarden_operator_policy_valid", name="gone") == 3.0
    assert scraped_total(metrics_url, "mailwarden_operator_policy_valid",
                         name="gone", namespace="b") == 2.0


def test_a_metric_is_not_matched_by_its_prefix(metrics_url: str) -> None:
    assert scraped_total(metrics_url, "mailwarden_operator_policy_valid") == 4.0
    assert scraped_total(metrics_url, "mailwarden_operator_policy_valid_total") == 7.0
    assert scraped_total(metrics_url, "absent") == 0.0
