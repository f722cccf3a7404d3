"""Forget (issue 15, privacy): a real store on each backend replaces an address by its keyed
fingerprint in every suppression and change-log row while keeping it suppressed — Check
still answers by the rule, a filter pod's cache still suppresses it (Watch snapshot and
fingerprint snapshot alike) — and refuses to start later with another fingerprint key,
which would silently end those objections."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from filter_server.server.suppression_cache import SuppressionCache
from mailwarden.fingerprint_index import SortedFingerprints
from mailwarden.fingerprints import FingerprintKey
from mailwarden.suppression import MailClass
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb
from testkit.store import RESUBSCRIBE_TOKEN

ADMIN = (("authorization", f"Bearer {RESUBSCRIBE_TOKEN}"),)
KEY_HEX = "3c" * 32


def unsubscribe(stub, address: str, scope: str, reason: int = pb.UNSUBSCRIBE) -> int:
    return stub.Unsubscribe(pb.UnsubscribeRequest(
        address=address, scope=scope, reason=reason, source="test",
        idempotency_key=uuid.uuid4().hex), timeout=10).sequence


def database_text(backend: str, store_args: list[str]) -> str:
    """Every address and scope the database holds, suppressions and change log."""
    query = ("SELECT address || ' ' || scope FROM unsubscribe_suppressions UNION ALL "
             "SELECT address || ' ' || scope FROM unsubscribe_changes UNION ALL "
             "SELECT coalesce(address, '') FROM unsubscribe_idempotency_keys")
    if backend == "postgres":
        import psycopg
        dsn = Path(store_args[store_args.index("--dsn-file") + 1]).read_text()
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(query).fetchall()
    else:
        import sqlite3
        with sqlite3.connect(store_args[store_args.index("--sqlite-path") + 1]) as conn:
            rows = conn.execute(query).fetchall()
    return "\n".join(r[0] for r in rows)


def test_a_forgotten_address_stays_suppressed_by_fingerprint_only(
        tmp_path: Path, backend, start_store, store_args) -> None:
    key_file = tmp_path / "fingerprint-key"
    key_file.write_text(KEY_HEX)
    store = start_store(store_args, extra_args=["--fingerprint-key-file", str(key_file),
                                                "--fingerprint-refresh-changes", "1"])
    stub = store.stub()
    unsubscribe(stub, "Ann@Example.com", "weekly", pb.COMPLAINT)
    unsubscribe(stub, "ann@example.com", "*")
    head = unsubscribe(stub, "bob@example.com", "weekly")

    with pytest.raises(grpc.RpcError) as refused:
        stub.Forget(pb.ForgetRequest(address="ann@example.com"), timeout=10)
    assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED,
                                    grpc.StatusCode.PERMISSION_DENIED)
    done = stub.Forget(pb.ForgetRequest(address="ANN@example.com"), metadata=ADMIN,
                       timeout=10)
    assert (done.suppressions, done.history) == (2, 2)
    held = database_text(backend, store_args)
    assert "ann" not in held.lower() and "bob@example.com" in held
    assert store.stub().Check(pb.CheckRequest(addresses=["x@y.z"]), timeout=10) \
        .head_sequence == head  # nothing was logged as a change

    # Check still applies the rule: the complaint in "weekly" stops transactional mail too,
    # the global one stops every list.
    def suppressed(address: str, scope: str, mail_class: int) -> bool:
        answer = stub.Check(pb.CheckRequest(addresses=[address], scope=scope,
                                            mail_class=mail_class), timeout=10)
        return [r.address for r in answer.suppressed] == [address]
    assert suppressed("Ann@example.com", "weekly", pb.TRANSACTIONAL)
    assert suppressed("ann@example.com", "other", pb.BULK)
    assert not suppressed("carl@example.com", "weekly", pb.BULK)

    # A filter pod's cache with the shared key: from a Watch snapshot of fingerprints...
    key = FingerprintKey(bytes.fromhex(KEY_HEX))
    with SuppressionCache(store.target, key=key) as cache:
        assert cache.wait_ready(20)
        assert cache.suppressed(["ann@example.com", "bob@example.com", "carl@example.com"],
                                "weekly", MailClass.TRANSACTIONAL) == ["ann@example.com"]
        assert cache.foreign == 0
        assert cache.is_fresh()
    # A pod with another key cannot match them: it must not claim complete answers, so its
    # verdicts say SUPPRESSION_STALE (a sender holds bulk mail) rather than mail the person.
    with SuppressionCache(store.target, key=FingerprintKey(bytes.fromhex("5e" * 32))) as cache:
        assert cache.wait_ready(20)
        assert cache.foreign == 2
        assert not cache.is_fresh() and not cache.stats().complete
    # ... and in the store's fingerprint snapshot.
    from filter_server.server.suppression_artifact import fetch_fingerprint_snapshot
    with grpc.insecure_channel(store.target) as channel:
        fetch_fingerprint_snapshot(channel, key, tmp_path / "pod.idx")
    index = SortedFingerprints.open(tmp_path / "pod.idx", key)
    assert index.lookup(key.fingerprint("ann@example.com", "weekly")) is True
    assert index.lookup(key.fingerprint("ann@example.com", "*")) is False

    # Another key would orphan the forgotten suppressions: the store says so and stops.
    store.close()
    other_key = tmp_path / "other-key"
    other_key.write_text("4d" * 32)
    restarted = start_store(store_args, name="rotated", wait_serving=False,
                            extra_args=["--fingerprint-key-file", str(other_key)])
    assert restarted.proc is not None and restarted.proc.wait(60) == 2
    log = restarted.log()
    assert "2 forgotten suppressions are kept under another fingerprint key" in log
    assert "4d4d4d" not in log and KEY_HEX not in log and "Traceback" not in log


def test_forget_needs_the_fingerprint_key(start_store, store_args) -> None:
    stub = start_store(store_args).stub()
    with pytest.raises(grpc.RpcError) as refused:
        stub.Forget(pb.ForgetRequest(address="ann@example.com"), metadata=ADMIN, timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--fingerprint-key-file" in refused.value.details()
