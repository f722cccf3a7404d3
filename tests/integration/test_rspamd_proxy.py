"""Rspamd's own milter proxy (its `rspamd_proxy` worker, milter = yes) in front of our
Rspamd-protocol port, behind a real Postfix: an Rspamd installation switches its scanner to
Mailwarden by changing the proxy's upstream."""

from __future__ import annotations

import smtplib
import time

import pytest

from testkit.filter import wait_for
from testkit.mta import Postfix, RspamdProxy, send
from testkit.protocols import HAM, HELD, REJECT_REASON, REJECTED, TAGGED, start_server


@pytest.fixture
def chain(tmp_path):
    server = start_server(tmp_path)
    proxy = RspamdProxy(upstream_port=server.ports["rspamd_port"])
    postfix = None
    try:
        proxy.start()
        postfix = Postfix(milter=f"inet:127.0.0.1:{proxy.port}").start()
        yield server, proxy, postfix
    finally:
        if postfix is not None:
            postfix.stop()
        proxy.stop()
        server.kill()


def test_postfix_through_rspamds_proxy_to_mailwarden(chain):
    server, proxy, postfix = chain
    send(postfix.port, "alice@example.com", ["bob@test.example"], HAM)
    send(postfix.port, "alice@example.com", ["carol@test.example"], TAGGED)
    send(postfix.port, "alice@example.com", ["dave@test.example"], HELD)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(postfix.port, "alice@example.com", ["erin@test.example"], REJECTED)
    assert refused.value.smtp_code == 554  # the proxy's code; the text is the policy's
    assert refused.value.smtp_error.decode() == f"5.7.1 {REJECT_REASON}"
    ham, = postfix.mailboxes.wait("bob")
    assert ham["X-Spam-Flag"] == "NO"
    assert ham["Authentication-Results"].startswith("mailwarden; x-mailwarden=pass")
    tagged, = postfix.mailboxes.wait("carol")
    assert tagged["X-Spam-Flag"] == "YES" and "SUBJ_MONEY" in tagged["X-Spam-Status"]
    wait_for(lambda: postfix.held() == 1, 10, "the quarantined message in the hold queue")
    time.sleep(0.5)
    assert postfix.mailboxes.messages("dave") == []
    assert server.metric("mailwarden_filter_requests_total", method="rspamd", code="OK") == 4
