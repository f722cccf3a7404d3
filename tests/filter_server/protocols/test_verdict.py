"""The verdict mapping every protocol shares (filter_server/protocols/verdict.py)."""

from __future__ import annotations

import grpc

from filter_server.protocols.verdict import (
    MtaOptions,
    clean_text,
    header_fields,
    mail_class_and_scope,
    refusal,
    result_headers,
)
from mailwarden.filter.v1 import filter_pb2


def test_reply_text_cannot_break_the_protocol():
    assert clean_text("spam\r\n250 OK %s\x00") == "spam  250 OK  s"


def test_options_default_and_come_from_the_policy():
    assert MtaOptions.of(None).header_prefix == "X-Spam"
    options = MtaOptions.of({"thresholds": {"tag": 4, "reject": 9},
                             "mta": {"headerPrefix": "X-MW", "authservId": "mx.example",
                                     "rejectReason": "no\r\nthanks"}})
    assert (options.tag_threshold, options.reject_threshold) == (4.0, 9.0)
    assert options.reject_reason == "no  thanks"
    names = [name for name, _ in result_headers(filter_pb2.ClassifyResponse(), options)]
    assert names == ["X-MW-Flag", "X-MW-Score", "X-MW-Action", "X-MW-Status",
                     "Authentication-Results"]
    assert options.owned_header("x-mw-flag", "YES")
    assert options.owned_header("Authentication-Results", " MX.example; spf=pass")
    assert not options.owned_header("Authentication-Results", "other.example; spf=pass")


def test_list_scope_and_mail_class_come_from_headers():
    raw = (b"Subject: x\r\nX-Mailwarden-List-Scope: Weekly\r\n"
           b"X-Mailwarden-Mail-Class: transactional\r\n\r\nbody")
    assert mail_class_and_scope(header_fields(raw), MtaOptions()) == \
        (filter_pb2.TRANSACTIONAL, "weekly")
    assert mail_class_and_scope([], MtaOptions()) == (filter_pb2.BULK, "")


def test_folded_headers_are_unfolded():
    assert header_fields(b"Subject: a\r\n  b\r\nTo: c\r\n\r\nSubject: body") == \
        [("Subject", "a b"), ("To", "c")]


def test_refusals_are_temporary_unless_the_message_can_never_pass():
    capacity = refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "server at capacity (64 calls)")
    assert capacity.temporary and capacity.smtp_reply.startswith("451 4.7.1 mail filter:")
    too_big = refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "message is 9 bytes; at most 8")
    assert not too_big.temporary and too_big.smtp_code == "552"
    assert refusal(grpc.StatusCode.UNAVAILABLE, "no policy loaded yet").temporary
    assert refusal(grpc.StatusCode.DEADLINE_EXCEEDED, "late").temporary


def test_sender_authentication_results_join_ours():
    """With the policy's `authentication` on, SPF/DKIM/DMARC results go into our one
    Authentication-Results header, and incoming copies under its authserv-id are removed."""
    options = MtaOptions.of({"authentication": {"enabled": True,
                                                "authservId": "mx.example.com"}})
    response = filter_pb2.ClassifyResponse(
        action=filter_pb2.ACCEPT,
        authentication_results="mx.example.com; spf=pass smtp.mailfrom=example.org;\r\n"
                               "\tdkim=pass header.d=example.org")
    header = dict(result_headers(response, options))["Authentication-Results"]
    assert header.startswith("mailwarden; x-mailwarden=pass")
    assert header.endswith("policy.hits=none; spf=pass smtp.mailfrom=example.org; "
                           "dkim=pass header.d=example.org")
    assert options.owned_header("Authentication-Results", "mx.example.com; spf=pass")
    none = filter_pb2.ClassifyResponse(authentication_results="mx.example.com; none")
    assert dict(result_headers(none, options))["Authentication-Results"].endswith(
        "policy.hits=none")
    off = MtaOptions.of({"authentication": {"enabled": False, "authservId": "mx.example.com"}})
    assert not off.owned_header("Authentication-Results", "mx.example.com; spf=pass")
