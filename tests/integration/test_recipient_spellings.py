"""Issue 20, item 3: suppression must not fail open for ordinary spellings of a recipient.
A real unsubscribe store (embedded SQLite) and a real filter server with
`--suppression-store`: suppressions recorded in one spelling apply to every other spelling
of the same recipient in Classify, a different domain stays unaffected, and recipients that
are not addresses are reported, never dropped silently."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from mailwarden.filter.v1 import filter_pb2
from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as upb
from testkit.filter import Server, mini_policy, wait_for, write_policy
from testkit.store import StoreProcess

MESSAGE = b"From: news@shop.example\nTo: list@shop.example\nSubject: Weekly\n\nOffers.\n"


@pytest.fixture
def store(tmp_path: Path):
    proc = StoreProcess(tmp_path, ["--store", "sqlite", "--sqlite-path",
                                   str(tmp_path / "store.db"), "--no-one-click"])
    yield proc.start()
    proc.close()


@pytest.fixture
def filter_server(tmp_path: Path, store: StoreProcess):
    policy_dir = tmp_path / "policy"
    write_policy(policy_dir, mini_policy(1))
    server = Server(tmp_path, policy_dir, ["--suppression-store", store.target,
                                           "--drain-seconds", "0"], workers=1)
    try:
        server.wait_serving()
        yield server
    finally:
        server.kill()


def classify(server: Server, recipients: list[str]) -> filter_pb2.ClassifyResponse:
    return server.stub().Classify(filter_pb2.ClassifyRequest(
        request_id=uuid.uuid4().hex, message=MESSAGE, list_scope="weekly",
        mail_class=filter_pb2.BULK,
        envelope=filter_pb2.Envelope(mail_from="news@shop.example", recipients=recipients)),
        timeout=10)


SPELLINGS = {
    # recorded as → other spellings Classify receives
    "reader@example.com": ["<reader@example.com>", '"reader"@example.com',
                           "<@relay.example:Reader@Example.COM>",
                           "ｒｅａｄｅｒ＠ｅｘａｍｐｌｅ．ｃｏｍ"],
    "leser@straße.de": ["leser@xn--strae-oqa.de", "<LESER@STRAẞE.DE>"],
    "STRASSE@mail.example": ["straße@mail.example", "Straße@MAIL.example"],
}


def test_every_spelling_of_an_unsubscribed_recipient_is_suppressed(store, filter_server):
    stub = store.stub()
    last = 0
    for recorded in SPELLINGS:
        last = stub.Unsubscribe(upb.UnsubscribeRequest(
            address=recorded, scope="*", reason=upb.UNSUBSCRIBE, source="test"),
            timeout=10).sequence
    wait_for(lambda: classify(filter_server, ["reader@example.com"]).suppressed_recipients,
             30, f"sequence {last} in the filter's cache")
    spellings = [s for variants in SPELLINGS.values() for s in variants]
    response = classify(filter_server, spellings)
    assert response.suppression_state == filter_pb2.SUPPRESSION_FRESH
    assert list(response.suppressed_recipients) == spellings
    assert list(response.unparseable_recipients) == []


def test_a_different_domain_is_not_suppressed(store, filter_server):
    """straße.de and strasse.de are different domains (IDNA2008): the IDNA 2003 mapping
    would let one person's unsubscribe suppress a stranger."""
    stub = store.stub()
    stub.Unsubscribe(upb.UnsubscribeRequest(address="leser@straße.de", scope="*",
                                            source="test"), timeout=10)
    wait_for(lambda: classify(filter_server, ["leser@straße.de"]).suppressed_recipients, 30,
             "the unsubscribe in the filter's cache")
    response = classify(filter_server, ["leser@strasse.de", "leser@straße.de"])
    assert list(response.suppressed_recipients) == ["leser@straße.de"]


def test_unparseable_recipients_are_reported_not_dropped(store, filter_server):
    wait_for(lambda: classify(filter_server, ["x@example.com"]).suppression_state
             == filter_pb2.SUPPRESSION_FRESH, 30, "a fresh suppression cache")
    recipients = ["ok@example.com", "Ann <ann@example.com>", "no-at-sign", "bad@exa mple.com",
                  "also-ok@example.com"]
    response = classify(filter_server, recipients)
    assert response.suppression_state == filter_pb2.SUPPRESSION_FRESH
    assert list(response.unparseable_recipients) == ["Ann <ann@example.com>", "no-at-sign",
                                                     "bad@exa mple.com"]
    assert list(response.suppressed_recipients) == []
