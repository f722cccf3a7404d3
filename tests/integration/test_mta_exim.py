"""A real Exim (exim4-daemon-heavy) whose DATA ACL asks our spamd port (`spam =`) or our
Rspamd port (`variant=rspamd`): Exim's own parsers read our answers."""

from __future__ import annotations

import smtplib

import pytest

from testkit.mta import Exim, send
from testkit.processes import free_port
from testkit.protocols import HAM, HELD, REJECTED, TAGGED, start_server


@pytest.fixture(scope="module")
def filter_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("exim"))
    yield server
    server.kill()


@pytest.fixture
def exim():
    started: list[Exim] = []

    def start(spamd_address: str, defer_ok: bool = False) -> Exim:
        instance = Exim(spamd_address=spamd_address, defer_ok=defer_ok)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()


def test_spam_condition_against_our_spamd_port(filter_server, exim):
    mta = exim(f"127.0.0.1 {filter_server.ports['spamd_port']}")
    send(mta.port, "alice@example.com", ["bob@test.example"], HAM)
    got, = mta.mailboxes.wait("bob")
    assert got["X-Exim-Spam-Score"] == "0.0"
    # spamd's answer is spam or not: Exim's `spam = nobody` is true from the tag threshold
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mta.port, "alice@example.com", ["carol@test.example"], TAGGED)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error == b"5.7.1 Rejected as spam by Mailwarden (score 5.0)"
    assert filter_server.metric("mailwarden_filter_protocol_commands_total", protocol="spamd",
                                command="REPORT") >= 2


def test_variant_rspamd_against_our_rspamd_port(filter_server, exim):
    mta = exim(f"127.0.0.1 {filter_server.ports['rspamd_port']} variant=rspamd")
    send(mta.port, "alice@example.com", ["bob@test.example"], HAM)
    send(mta.port, "alice@example.com", ["carol@test.example"], TAGGED)
    send(mta.port, "alice@example.com", ["dave@test.example"], HELD)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mta.port, "alice@example.com", ["erin@test.example"], REJECTED)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error == b"5.7.1 Rejected as spam by Mailwarden (score 20.0)"
    assert mta.mailboxes.wait("bob")[0]["X-Exim-Spam-Action"] == "no action"
    tagged, = mta.mailboxes.wait("carol")
    assert tagged["X-Exim-Spam-Action"] == "add header"
    assert tagged["X-Exim-Spam-Score"] == "5.0"
    assert "Symbol: SUBJ_MONEY(2.00)" in tagged["X-Exim-Spam-Report"]
    assert mta.mailboxes.wait("dave")[0]["X-Exim-Spam-Action"] == "quarantine"


@pytest.mark.parametrize("defer_ok", [False, True])
def test_with_the_filter_down_exim_defers_unless_defer_ok(exim, defer_ok):
    mta = exim(f"127.0.0.1 {free_port()}", defer_ok=defer_ok)  # nothing listens there
    if defer_ok:
        send(mta.port, "alice@example.com", ["bob@test.example"], TAGGED)
        got, = mta.mailboxes.wait("bob")
        assert got["X-Exim-Spam-Score"] is None  # accepted unscanned
    else:
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            send(mta.port, "alice@example.com", ["bob@test.example"], TAGGED)
        assert deferred.value.smtp_code == 451
        assert mta.mailboxes.messages("bob") == []
