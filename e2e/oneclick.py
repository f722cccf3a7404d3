"""The one-click part of the suite that does not need a cluster: minting links with the
`mailwarden token` command and judging what `mwclient.py oneclick` and `oneclick-load`
report. The cluster tests (e2e/test_40_unsubscribe.py, e2e/test_79_store_failover.py) and
their local rehearsals (tests/e2e_static) share it."""

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


# --- the store failover under one-click load (e2e/test_79_store_failover.py) -------------

# What a one-click POST may answer while the store has no database: 503, or (urllib's error
# class) a refused or reset connection while the store pods are out of their Service.
OUTAGE_ANSWERS = frozenset({"503", "ConnectionRefusedError", "ConnectionResetError"})


def judge_failover(summary: dict[str, Any], records: dict[str, list[Any]], *, killed: float,
                   stored: set[str], pods: int | None, stale_after: float,
                   outage_limit: float) -> dict[str, Any]:
    """Assert what senders and mailbox providers must see across a store failover, from
    what `mwclient.py oneclick-load` recorded (`summary` and its parts `records`), the
    kill's wall-clock time, the addresses the promoted database holds, the number of filter
    pods (None: the ones the client found at the end; on a cluster the HPA may change it)
    and their --suppression-stale-after. Returns the figures (seconds after the kill).

    - 0 acknowledged unsubscribes lost (each one is in `stored`);
    - the suppression caches resumed without a gap: afterwards every acknowledged address
      is suppressed, SUPPRESSION_FRESH, on every filter pod;
    - one-click answered only 200, or during the outage OUTAGE_ANSWERS, never before the
      kill, and acknowledges again within `outage_limit`;
    - Classify never failed, and said anything but SUPPRESSION_FRESH only during the
      outage (up to `stale_after` past its end: a cache is stale only once it has not
      been confirmed current for that long)."""
    assert summary["stopped_by"] == "stop-file", "the load ran out of links or time"
    acked: dict[str, float] = dict(records.get("acked", []))
    attempts = records.get("attempts", [])
    samples = records.get("samples", [])
    lost = sorted(set(acked) - stored)
    assert not lost, f"{len(lost)} acknowledged unsubscribes lost: {lost[:10]}"
    acked_after = sorted(t for t in acked.values() if t > killed)
    assert acked_after, "no unsubscribe acknowledged after the failover"

    assert len(summary["final"]) >= 2, summary["final"]
    if pods is not None:  # (on a cluster, the HPA may have changed the count meanwhile)
        assert len(summary["final"]) == pods, summary["final"]
    for pod, final in summary["final"].items():
        assert final["missing"] == 0, f"{pod} misses acknowledged unsubscribes: {final}"
        assert final["state"] == "SUPPRESSION_FRESH", final

    failed = [a for a in attempts if a[3] != "200"]
    codes: dict[str, int] = {}
    for attempt in attempts:
        codes[attempt[3]] = codes.get(attempt[3], 0) + 1
    odd = [a for a in failed if a[3] not in OUTAGE_ANSWERS]
    assert not odd, f"one-click answers other than 200/503 during the failover: {odd[:10]}"
    early = [a for a in failed if a[2] < killed]
    assert not early, f"one-click errors before the kill: {early[:10]}"
    # The outage ends when every store replica acknowledges again: the first
    # acknowledgement after the kill, or the last error if a replica erred after that.
    recovered = max([acked_after[0], *(a[2] for a in failed)])
    assert recovered - killed < outage_limit, \
        f"one-click acknowledged again only {recovered - killed:.1f} s after the kill"

    errors = [s for s in samples if s[2].startswith("error")]
    assert not errors, f"Classify failed during the store failover: {errors[:10]}"
    assert samples and max(s[0] for s in samples) > recovered, "no Classify samples after it"
    stale = [s for s in samples if s[2] != "SUPPRESSION_FRESH"]
    wrong = [s for s in stale if s[0] < killed or s[0] > recovered + stale_after]
    assert not wrong, f"Classify said {wrong[0][2]} outside the outage: {wrong[:10]}"
    return {
        "acknowledged": len(acked),
        "acknowledged_before_kill": sum(1 for t in acked.values() if t <= killed),
        "lost": 0,
        "answers": codes,
        "errors": len(failed),
        "first_ack_after_kill": round(acked_after[0] - killed, 3),
        "outage_over": round(recovered - killed, 3),
        "error_window": round(max(a[2] for a in failed) - min(a[1] for a in failed), 3)
        if failed else 0.0,
        "slowest_answer": round(max((a[2] - a[1] for a in attempts), default=0.0), 3),
        "samples": len(samples),
        "stale_samples": len(stale),
        "stale_window": round(max(s[0] for s in stale) - min(s[0] for s in stale), 3)
        if stale else 0.0,
        "suppressed_everywhere_after": sorted(f["after_seconds"]
                                              for f in summary["final"].values()),
    }


def describe_failover(figures: dict[str, Any]) -> str:
    return (f"{figures['acknowledged']} acknowledged ({figures['acknowledged_before_kill']} "
            f"before the kill), 0 lost; one-click answers {figures['answers']}, errors for "
            f"{figures['error_window']:.2f} s, slowest answer {figures['slowest_answer']:.2f} s, "
            "acknowledging again "
            f"{figures['outage_over']:.2f} s after the kill; Classify: "
            f"{figures['samples']} samples, {figures['stale_samples']} not FRESH "
            f"({figures['stale_window']:.2f} s), 0 errors; every acknowledged address "
            f"suppressed on every filter pod {figures['suppressed_everywhere_after']} s "
            "after the load stopped")
