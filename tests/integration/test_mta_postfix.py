"""A real Postfix (Debian's package, its own instance on loopback) with our milter in
smtpd_milters: mail injected over SMTP gets our verdicts as Postfix's actions."""

from __future__ import annotations

import smtplib
import time
import uuid

import pytest

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as upb
from testkit.filter import wait_for
from testkit.mta import Postfix, send
from testkit.processes import free_port
from testkit.protocols import (
    HAM,
    HELD,
    REJECT_REASON,
    REJECTED,
    TAGGED,
    classify,
    message,
    protocol_policy,
    start_server,
)
from testkit.store import StoreProcess


@pytest.fixture
def filter_server(tmp_path):
    server = start_server(tmp_path)
    yield server
    server.kill()


@pytest.fixture
def postfix(tmp_path):
    started: list[Postfix] = []

    def start(milter_port: int, default_action: str = "tempfail") -> Postfix:
        instance = Postfix(milter=f"inet:127.0.0.1:{milter_port}",
                           default_action=default_action)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()


def test_verdicts_become_postfix_actions(filter_server, postfix):
    mta = postfix(filter_server.ports["milter_port"])
    send(mta.port, "alice@example.com", ["bob@test.example"], HAM)
    send(mta.port, "alice@example.com", ["carol@test.example"], TAGGED)
    send(mta.port, "alice@example.com", ["dave@test.example"], HELD)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mta.port, "alice@example.com", ["erin@test.example"], REJECTED)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.decode() == f"5.7.1 {REJECT_REASON}"

    ham, = mta.mailboxes.wait("bob")
    assert ham["X-Spam-Flag"] == "NO" and ham["X-Spam-Action"] == "accept"
    assert ham["Authentication-Results"].startswith("mailwarden; x-mailwarden=pass")
    assert "Shall we meet at noon?" in ham.get_content()
    tagged, = mta.mailboxes.wait("carol")
    assert tagged["X-Spam-Flag"] == "YES" and tagged["X-Spam-Score"] == "5.0"
    reference = classify(filter_server, TAGGED)
    hits = ",".join(h.name for h in reference.hits)
    assert f"policy.hits={hits}" in tagged["Authentication-Results"]
    assert tagged["X-Spam-Status"].startswith(f"Yes, score=5.0 required=3.0 tests={hits}")
    wait_for(lambda: mta.held() == 1, 10, "the quarantined message in Postfix's hold queue")
    assert mta.mailboxes.messages("dave") == [] and mta.mailboxes.messages("erin") == []
    assert "milter triggers HOLD action" in mta.log()
    assert filter_server.metric("mailwarden_filter_requests_total", method="milter",
                                code="OK") == 4
    assert filter_server.metric("mailwarden_filter_verdicts_total", action="REJECT") == 1


def test_forged_headers_are_replaced(filter_server, postfix):
    mta = postfix(filter_server.ports["milter_port"])
    forged = HAM.replace(b"Subject:", b"X-Spam-Flag: NO\r\nX-Spam-Score: -50\r\nSubject:")
    send(mta.port, "alice@example.com", ["bob@test.example"], TAGGED.replace(
        b"Subject:", b"X-Spam-Flag: NO\r\nSubject:"))
    got, = mta.mailboxes.wait("bob")
    assert got.get_all("X-Spam-Flag") == ["YES"]
    send(mta.port, "alice@example.com", ["carol@test.example"], forged)
    got, = mta.mailboxes.wait("carol")
    assert got.get_all("X-Spam-Score") == ["0.0"]


@pytest.mark.parametrize("default_action", ["tempfail", "accept"])
def test_with_the_filter_down_postfix_applies_its_default_action(postfix, default_action):
    mta = postfix(free_port(), default_action)  # nothing listens there
    if default_action == "tempfail":
        with pytest.raises(smtplib.SMTPResponseException) as deferred:
            send(mta.port, "alice@example.com", ["bob@test.example"], HAM)
        assert deferred.value.smtp_code == 451
        assert b"4.7.1" in deferred.value.smtp_error
        assert mta.mailboxes.messages("bob") == []
    else:
        send(mta.port, "alice@example.com", ["bob@test.example"], TAGGED)
        got, = mta.mailboxes.wait("bob")
        assert got["X-Spam-Flag"] is None  # delivered unfiltered, as configured
    assert "can't connect" in mta.log() or "connect to" in mta.log()


# --- suppression: the MTA itself drops unsubscribed recipients ---------------------------------
@pytest.fixture
def store(tmp_path):
    proc = StoreProcess(tmp_path, ["--store", "sqlite", "--sqlite-path",
                                   str(tmp_path / "store.db"), "--no-one-click"])
    yield proc.start()
    proc.close()


@pytest.mark.parametrize("remove", [True, False])
def test_a_suppressed_recipient_is_removed_when_the_policy_says_so(tmp_path, store, postfix,
                                                                  remove):
    server = start_server(tmp_path, "--suppression-store", store.target,
                          policy=protocol_policy(remove_suppressed=remove))
    try:
        store.stub().Unsubscribe(upb.UnsubscribeRequest(
            address="carol@test.example", scope="weekly", reason=upb.UNSUBSCRIBE,
            source="test", idempotency_key=uuid.uuid4().hex), timeout=10)
        bulk = message("This week", "News of the week.",
                       extra="X-Mailwarden-List-Scope: weekly\r\n")
        recipients = ["bob@test.example", "carol@test.example"]
        wait_for(lambda: list(classify(server, bulk, recipients=recipients,
                                       list_scope="weekly").suppressed_recipients)
                 == ["carol@test.example"], 20, "the unsubscribe to reach the filter")
        mta = postfix(server.ports["milter_port"])
        send(mta.port, "news@example.com", recipients, bulk)
        assert len(mta.mailboxes.wait("bob")) == 1
        time.sleep(1)  # carol's copy would have been delivered with bob's
        removed = server.metric("mailwarden_filter_milter_recipients_removed_total")
        if remove:
            assert mta.mailboxes.messages("carol") == []
            assert removed == 1
            assert "suppressed recipients removed from the envelope" in server.log()
        else:
            assert len(mta.mailboxes.wait("carol")) == 1
            assert removed == 0
    finally:
        server.kill()


def test_locally_submitted_mail_passes_the_milter_too(filter_server, postfix):
    """non_smtpd_milters: mail from Postfix's sendmail command (pickup, not smtpd)."""
    mta = postfix(filter_server.ports["milter_port"])
    for recipient, raw in (("carol@test.example", TAGGED), ("erin@test.example", REJECTED)):
        mta.sendmail("alice@example.com", recipient, raw)
    tagged, = mta.mailboxes.wait("carol")
    assert tagged["X-Spam-Flag"] == "YES" and tagged["X-Spam-Action"] == "tag"
    wait_for(lambda: "milter-reject" in mta.log(), 20, "Postfix to log the rejection")
    assert mta.mailboxes.messages("erin") == []
    assert REJECT_REASON in mta.log()
