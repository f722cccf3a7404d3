"""The real `spamc` (SpamAssassin 4) and `rspamc` (Rspamd 3) clients against our ports:
every command they have for scanning, and the verdict each reports equals Classify's for
the same message."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from mailwarden.filter.v1 import filter_pb2
from testkit.mta import MtaMissing
from testkit.protocols import EXPECTED, HAM, TAGGED, classify, message, start_server

MESSAGES = list(EXPECTED)
RSPAMD_ACTION = {"ACCEPT": "no action", "TAG": "add header", "QUARANTINE": "quarantine",
                 "REJECT": "reject"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a failure, not a skip: scripts/bootstrap.sh installs both, so CI always runs these
    if not (shutil.which("spamc") and shutil.which("rspamc")):
        raise MtaMissing("spamc/rspamc missing: scripts/bootstrap.sh installs them")
    started = start_server(tmp_path_factory.mktemp("clients"))
    yield started
    started.kill()


def spamc(server, *args: str, raw: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["spamc", "-x", "-d", "127.0.0.1", "-p",
                           str(server.ports["spamd_port"]), *args],
                          input=raw, capture_output=True, timeout=30)


def rspamc(server, *args: str, raw: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["rspamc", "-h", f"127.0.0.1:{server.ports['rspamd_port']}",
                           *args], input=raw, capture_output=True, timeout=30)


@pytest.mark.parametrize("raw", MESSAGES, ids=list(EXPECTED.values()))
def test_spamc_commands_agree_with_classify(server, raw):
    reference = classify(server, raw)
    action = filter_pb2.Action.Name(reference.action)
    assert action == EXPECTED[raw]
    spam = action != "ACCEPT"
    names = [h.name for h in reference.hits]

    check = spamc(server, "-c", raw=raw)  # CHECK: score/required, exit 1 for spam
    assert check.stdout.decode() == f"{reference.score:.1f}/3.0\n"
    assert check.returncode == (1 if spam else 0)
    symbols = spamc(server, "-y", raw=raw)  # SYMBOLS
    assert symbols.stdout.decode().strip() == ",".join(names)
    report = spamc(server, "-R", raw=raw).stdout.decode()  # REPORT
    assert report.startswith(f"{reference.score:.1f}/3.0\n")
    assert all(re.search(rf"^\s*{h.score:.1f} {h.name}\b", report, re.M)
               for h in reference.hits)
    if_spam = spamc(server, "-r", raw=raw).stdout.decode()  # REPORT_IFSPAM
    assert ("Content analysis details" in if_spam) == spam
    processed = spamc(server, raw=raw).stdout  # PROCESS
    head, _, body = processed.partition(b"\r\n\r\n")
    assert f"X-Spam-Flag: {'YES' if spam else 'NO'}".encode() in head
    assert body == raw.partition(b"\r\n\r\n")[2]
    headers = spamc(server, "--headers", raw=raw).stdout  # HEADERS (spamc re-adds the body)
    assert headers == processed


def test_spamc_ping_and_tell(server):
    ping = spamc(server, "-K", raw=b"")
    assert (ping.returncode, ping.stdout) == (0, b"SPAMD/1.5 0\n")
    before = server.metric("mailwarden_filter_protocol_commands_total", protocol="spamd",
                           command="TELL")
    learn = spamc(server, "-L", "spam", raw=TAGGED)
    # spamc does not read TELL's status code; it only reports success on `DidSet`, which
    # a refused TELL (69 EX_UNAVAILABLE, tests/filter_server/protocols) never sends
    assert b"successfully" not in learn.stdout
    assert server.metric("mailwarden_filter_protocol_commands_total", protocol="spamd",
                         command="TELL") == before + 1


@pytest.mark.parametrize("raw", MESSAGES, ids=list(EXPECTED.values()))
def test_rspamc_agrees_with_classify(server, raw):
    reference = classify(server, raw)
    action = RSPAMD_ACTION[filter_pb2.Action.Name(reference.action)]
    result = json.loads(rspamc(server, "-j", raw=raw).stdout)
    assert result["action"] == action
    assert result["score"] == pytest.approx(reference.score)
    assert set(result["symbols"]) == {h.name for h in reference.hits}
    text = rspamc(server, raw=raw).stdout.decode()  # `symbols`, the default command
    assert f"Action: {action}\n" in text
    assert f"Score: {reference.score:.2f} / 15.00" in text
    for hit in reference.hits:
        assert f"Symbol: {hit.name} ({hit.score:.2f})" in text


def test_rspamc_passes_the_envelope(server):
    raw = message("hello", "plain text")
    envelope = ["-F", "spammer@bad.example", "-r", "bob@test.example", "-r",
                "carol@test.example", "-i", "192.0.2.7", "--helo", "mx.bad.example",
                "--hostname", "mx.bad.example", "-j"]
    result = json.loads(rspamc(server, *envelope, raw=raw).stdout)
    reference = classify(server, raw, mail_from="spammer@bad.example")
    assert "BLOCKLIST_SENDER" in result["symbols"]  # the envelope sender, not From:
    assert result["score"] == pytest.approx(reference.score)


def test_rspamc_mime_output_and_what_is_not_served(server):
    mime = rspamc(server, "-m", raw=TAGGED)
    assert mime.returncode == 0 and b"X-Spam-Action: add header" in mime.stdout
    stat = rspamc(server, "stat", raw=b"")  # a controller command: not served here
    assert stat.returncode != 0 and b"404" in stat.stdout + stat.stderr
    assert spamc(server, "-c", raw=HAM).returncode == 0
