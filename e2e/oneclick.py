"""The one-click part of the suite that does not need a cluster: minting links with the
`mailwarden token` command and judging what `mwclient.py oneclick` reports. The kind test
(e2e/test_40_unsubscribe.py) and its local rehearsal (tests/e2e_static) share it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

MAILWARDEN = Path(sys.executable).parent / "mailwarden"
SCOPE = "newsletter"
ADDRESS = "e2e-ann@example.com"
OTHER = "e2e-bob@example.com"


def mint(key_file: Path, address: str, scope: str = SCOPE) -> str:
    out = subprocess.run([str(MAILWARDEN), "token", "mint", "--address", address, "--scope",
                          scope, "--signing-key-file", str(key_file)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def tamper(token: str) -> str:
    # A character well inside the MAC (the last one may only carry padding bits).
    i = len(token) - 10
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]


def check(result: dict[str, Any], address: str = ADDRESS) -> str:
    """Assert what a sender and a mailbox provider must see; returns a one-line account."""
    pods = result["pods"]
    assert len(pods) >= 2, pods
    for pod in pods:
        assert result["before"][pod] == {"suppressed": [], "state": "SUPPRESSION_FRESH"}, \
            result["before"]
        assert result["after_get"][pod]["suppressed"] == [], "a GET changed state"
        # Only the real link's address: the tampered link (for the other one) did nothing.
        assert result["after_post"][pod]["suppressed"] == [address], result["after_post"]
    assert result["get"] == 200 and result["post"] == 200, result
    assert result["tampered_same_response"], "a tampered token must look like a valid one"
    delays = result["visible_after_seconds"]
    assert all(v is not None for v in delays.values()), delays
    return (f"caches fresh after {result['fresh_after_seconds']} s; "
            f"GET {result['get']}, POST {result['post']}, tampered POST "
            f"{result['tampered_post']} (same page); suppressed in Classify on every filter "
            f"pod after {sorted(delays.values())} s")
