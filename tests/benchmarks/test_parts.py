"""The benchmark's parts that decide what the report says, checked without the servers
under test: the verdict definitions of each protocol, the DNS sink, CPU accounting from
/proc, teardown of process trees, and the generated rule sets (deterministic, valid, in the
documented mix). Real processes and sockets throughout; no mocks."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import rulegen
from testkit import procfs
from benchmarks.clients import ProtocolError
from benchmarks.clients.mailwarden import to_verdict
from benchmarks.clients.rspamd import parse_result
from benchmarks.clients.spamd import parse_response
from benchmarks.dns_sink import DnsSink
from benchmarks.loadgen import percentile
from benchmarks.messages import envelope_of
from benchmarks.run import subset_split
from benchmarks.servers import ServerSet
from mailwarden_local.corpus import split_corpus
from mailwarden.filter.v1 import filter_pb2
from tests.benchmarks.helpers import CORPUS


# --- verdicts: each system's own decision, as documented in docs/benchmarks.md ---------
def test_spamd_verdict_is_its_spam_flag() -> None:
    spam = parse_response(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 15.3 / 5.0\r\n\r\n")
    ham = parse_response(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 4.9 / 5.0\r\n\r\n")
    assert (spam.is_spam, spam.score) == (True, 15.3)
    assert (ham.is_spam, ham.score) == (False, 4.9)
    with pytest.raises(ProtocolError, match="EX_TEMPFAIL"):
        parse_response(b"SPAMD/1.0 75 EX_TEMPFAIL\r\n\r\n")


@pytest.mark.parametrize("action, spam", [("no action", False), ("greylist", False),
                                           ("soft reject", False), ("add header", True),
                                           ("rewrite subject", True), ("reject", True)])
def test_rspamd_verdict_is_spam_from_add_header_up(action: str, spam: bool) -> None:
    verdict = parse_result(b'{"action": "%s", "score": 7.5, "symbols": {"A": {}, "B": {}}}'
                           % action.encode())
    assert verdict.is_spam is spam and verdict.label == action and verdict.hits == 2


@pytest.mark.parametrize("action, spam", [(filter_pb2.ACCEPT, False), (filter_pb2.TAG, True),
                                           (filter_pb2.QUARANTINE, True),
                                           (filter_pb2.REJECT, True)])
def test_mailwarden_verdict_is_spam_unless_accept(action: int, spam: bool) -> None:
    response = filter_pb2.ClassifyResponse(action=action, score=3.0,
                                           hits=[filter_pb2.RuleHit(name="X", score=3.0)])
    assert to_verdict(response).is_spam is spam
    with pytest.raises(ProtocolError):
        to_verdict(filter_pb2.ClassifyResponse())


def test_envelope_comes_from_return_path_and_delivered_to() -> None:
    raw = (b"Return-Path: <bounce@lists.example>\r\nDelivered-To: me@example.com\r\n"
           b"From: Someone <someone@example.org>\r\nTo: a@example.net, b@example.net\r\n\r\nhi\r\n")
    assert envelope_of(raw) == ("bounce@lists.example", "me@example.com")
    bare = b"From: someone@example.org\r\nTo: Bee <b@example.net>\r\n\r\nhi\r\n"
    assert envelope_of(bare) == ("someone@example.org", "b@example.net")


def test_percentile_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 1001)]
    assert percentile(values, 50) == 500.0
    assert percentile(values, 99) == 990.0
    assert percentile(values, 99.9) == 999.0


# --- the DNS sink ----------------------------------------------------------------------
def test_dns_sink_answers_servfail_at_once_and_counts() -> None:
    query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + \
        b"\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    with DnsSink() as sink, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, ("127.0.0.1", sink.port))
        reply, _ = sock.recvfrom(512)
        assert sink.snapshot() == 1 and sink.names["example.com"] == 1
    ident, flags, qdcount, ancount = struct.unpack("!HHHH", reply[:8])
    assert ident == 0x1234 and flags & 0x8000 and flags & 0xF == 2  # response, SERVFAIL
    assert (qdcount, ancount) == (1, 0)


# --- /proc accounting and teardown -----------------------------------------------------
BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def test_cpu_of_children_that_exited_is_still_counted(tmp_path: Path) -> None:
    # a parent that runs a CPU-burning child to completion, then idles
    script = (f"import subprocess, sys, time\n"
              f"subprocess.run([sys.executable, '-c', {BURN.format(s=0.6)!r}])\n"
              f"print('done', flush=True)\ntime.sleep(60)\n")
    with ServerSet(progress=lambda _: None) as servers:
        log = tmp_path / "parent.log"
        parent = servers.start("parent", [sys.executable, "-c", script], log=log)
        before = procfs.cpu_seconds([parent.pid])
        deadline = time.monotonic() + 60
        while "done" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        after = procfs.cpu_seconds([parent.pid])
    assert after - before >= 0.5


def test_stopping_a_server_kills_its_whole_tree(tmp_path: Path) -> None:
    # a child in the server's group and one that left the group with setsid
    script = "sleep 300 & setsid sleep 301 & exec sleep 302"
    with ServerSet(progress=lambda _: None) as servers:
        server = servers.start("tree", ["bash", "-c", script], log=tmp_path / "tree.log")
        # Wait for all three, and for the setsid child to have left the group: its fork
        # shows up in the tree (still in the group) a moment before setsid runs.
        deadline = time.monotonic() + 10
        while True:
            tree = procfs.tree([server.pid])
            group = procfs.group_members(server.pid)
            if len(tree) >= 3 and len(group) < len(tree):
                break
            assert time.monotonic() < deadline, f"tree {tree}, group {group}: none left"
            time.sleep(0.05)
    assert not any(procfs.exists(pid) for pid in tree)
    assert servers.leftovers == []


# --- generated rule sets ---------------------------------------------------------------
@pytest.fixture(scope="module")
def small_split(tmp_path_factory: pytest.TempPathFactory):
    if not (CORPUS / ".complete").exists():
        pytest.skip("the SpamAssassin corpus is missing: run scripts/bootstrap.sh")
    root = tmp_path_factory.mktemp("split")
    full = split_corpus(CORPUS, root / "full")
    return subset_split(full, root / "subset", 150)


def test_rule_sets_are_deterministic_valid_and_in_the_documented_mix(small_split) -> None:
    mined = rulegen.mine(small_split, progress=lambda _: None)
    rules = rulegen.generate(mined, 100)
    again = rulegen.generate(rulegen.mine(small_split, progress=lambda _: None), 100)
    assert rules == again
    assert len(rules) == 100 and len({r["name"] for r in rules}) == 100
    kinds = {}
    for rule in rules:
        kind = rule["name"].split("_")[1].lower()
        kinds[kind] = kinds.get(kind, 0) + 1
    expected = {kind: round(share * 100) for kind, share in rulegen.KINDS}
    # a kind short of candidates is topped up with body word pairs, never left short
    assert sum(kinds.values()) == 100
    for kind, count in expected.items():
        if kind != "bigram":
            assert kinds.get(kind, 0) <= count
    assert any(r["score"] < 0 for r in rules) and any(r["score"] > 0 for r in rules)
    policy = rulegen.scaled_policy({"thresholds": {"tag": 5, "quarantine": 10,
                                                   "reject": 20}}, rules)
    rulegen.check(policy)  # raises with the errors if any rule does not validate


def test_asking_for_more_rules_than_the_corpus_yields_is_a_clear_error(small_split) -> None:
    mined = rulegen.mine(small_split, progress=lambda _: None)
    with pytest.raises(ValueError, match="candidate rules, fewer than 10000000"):
        rulegen.generate(mined, 10_000_000)


def test_bench_refuses_to_start_without_the_peer_packages(tmp_path: Path) -> None:
    # `--systems` with a made-up name is a usage error, not a traceback
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--systems", "qmail"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "systems are mailwarden" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the profile summary ---------------------------------------------------------------
def test_profile_summary_shares_self_and_inclusive_time(tmp_path: Path) -> None:
    from benchmarks.profile import summarize

    raw = tmp_path / "raw.txt"
    head = 'process 10:"python -m mailwarden.cli serve";process 11:"python -m worker {}"'
    raw.write_text(
        f"{head};run (grpc/_server.py:10);classify (engine/compiled.py:159);"
        f"parse (engine/message.py:116) 6\n"
        f"{head};run (grpc/_server.py:10);classify (engine/compiled.py:170) 3\n"
        f"{head};run (grpc/_server.py:12) 1\n")
    summary = summarize(raw)
    assert summary["samples"] == 10
    assert summary["self"][0] == ("parse (engine/message.py)", 0.6)
    inclusive = dict(summary["inclusive"])
    # the same function on different lines is one function
    assert inclusive["classify (engine/compiled.py)"] == 0.9
    assert inclusive["run (grpc/_server.py)"] == 1.0
    assert not any(name.startswith("process") for name in inclusive)
