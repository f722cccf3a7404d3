"""A real Haraka (npm, pinned in testkit/npm-haraka) with its stock `rspamd` plugin against
our Rspamd port and its stock `spamassassin` plugin against our spamd port: the plugins'
own parsers read our answers, and Haraka acts on them."""

from __future__ import annotations

import smtplib

import pytest

from testkit.haraka import Haraka
from testkit.mta import send
from testkit.processes import free_port
from testkit.protocols import HAM, HELD, REJECT_REASON, REJECTED, TAGGED, classify, start_server


@pytest.fixture(scope="module")
def filter_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("haraka"))
    yield server
    server.kill()


@pytest.fixture
def haraka():
    started: list[Haraka] = []

    def start(**options) -> Haraka:
        instance = Haraka(**options)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.stop()


def test_rspamd_plugin_against_our_rspamd_port(filter_server, haraka):
    before = filter_server.metric("mailwarden_filter_protocol_commands_total",
                                  protocol="rspamd", command="checkv2")
    mta = haraka(plugin="rspamd", port=filter_server.ports["rspamd_port"])
    send(mta.port, "alice@example.com", ["bob@test.example"], HAM)
    send(mta.port, "alice@example.com", ["carol@test.example"], TAGGED)
    # Haraka has no hold queue: a QUARANTINE verdict is delivered, marked as such
    send(mta.port, "alice@example.com", ["dave@test.example"], HELD)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mta.port, "alice@example.com", ["erin@test.example"], REJECTED)
    assert (refused.value.smtp_code, refused.value.smtp_error.decode()) == (550, REJECT_REASON)

    ham, = mta.mailboxes.wait("bob")
    assert (ham["X-Spam-Flag"], ham["X-Spam-Action"]) == ("NO", "accept")
    assert ham["Authentication-Results"].startswith("mailwarden; x-mailwarden=pass")
    tagged, = mta.mailboxes.wait("carol")
    reference = classify(filter_server, TAGGED)
    hits = ",".join(h.name for h in reference.hits)
    assert (tagged["X-Spam-Flag"], tagged["X-Spam-Action"]) == ("YES", "tag")
    assert tagged["X-Spam-Score"] == f"{reference.score:.1f}"
    assert f"policy.hits={hits}" in tagged["Authentication-Results"]
    held, = mta.mailboxes.wait("dave")
    assert (held["X-Spam-Flag"], held["X-Spam-Action"]) == ("YES", "quarantine")
    assert mta.mailboxes.messages("erin") == []
    assert filter_server.metric("mailwarden_filter_protocol_commands_total",
                                protocol="rspamd", command="checkv2") == before + 4


def test_spamassassin_plugin_against_our_spamd_port(filter_server, haraka):
    """The plugin sends `HEADERS SPAMC/1.4` with no Content-length and adds the X-Spam-*
    headers of our answer; its own reject_threshold refuses above a score."""
    before = filter_server.metric("mailwarden_filter_protocol_commands_total",
                                  protocol="spamd", command="HEADERS")
    mta = haraka(plugin="spamassassin", port=filter_server.ports["spamd_port"],
                 reject_threshold=15)
    forged = HAM.replace(b"Subject:", b"X-Spam-Flag: YES\r\nSubject:")
    send(mta.port, "alice@example.com", ["bob@test.example"], forged)
    send(mta.port, "alice@example.com", ["carol@test.example"], TAGGED)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(mta.port, "alice@example.com", ["erin@test.example"], REJECTED)
    assert refused.value.smtp_code == 550

    ham, = mta.mailboxes.wait("bob")
    assert ham.get_all("X-Spam-Flag") == ["NO"]
    assert ham["X-Spam-Status"].startswith("No, score=0.0 required=3.0 tests=none")
    tagged, = mta.mailboxes.wait("carol")
    reference = classify(filter_server, TAGGED)
    hits = ",".join(h.name for h in reference.hits)
    assert tagged["X-Spam-Flag"] == "YES"
    assert tagged["X-Spam-Status"].startswith(
        f"Yes, score={reference.score:.1f} required=3.0 tests={hits}")
    assert mta.mailboxes.messages("erin") == []
    assert filter_server.metric("mailwarden_filter_protocol_commands_total",
                                protocol="spamd", command="HEADERS") == before + 3


@pytest.mark.parametrize("defer", [True, False])
def test_with_the_filter_down_haraka_defers_unless_told_not_to(haraka, defer):
    mta = haraka(plugin="rspamd", port=free_port(), defer=defer)  # nothing listens there
    if defer:
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            send(mta.port, "alice@example.com", ["bob@test.example"], TAGGED)
        assert 400 <= deferred.value.smtp_code < 500
        assert b"Rspamd scan error" in deferred.value.smtp_error
        assert mta.mailboxes.messages("bob") == []
    else:
        send(mta.port, "alice@example.com", ["bob@test.example"], TAGGED)
        got, = mta.mailboxes.wait("bob")
        assert got["X-Spam-Flag"] is None  # delivered unscanned, as configured
