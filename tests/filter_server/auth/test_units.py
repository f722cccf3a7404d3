"""Unit-level properties of the authentication pieces that need no DNS."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from filter_server.auth import dkim as auth_dkim
from filter_server.auth.dmarc import parse_record
from filter_server.auth.headers import from_domains, header_fields, tags


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64).map(lambda b: b.replace(b"x", b" ").replace(b"y", b"\r\n")))
def test_linear_trailing_blank_strip_equals_the_regex(content: bytes) -> None:
    assert auth_dkim._strip_trailing_whitespace(content) == \
        re.sub(b"[\t ]+\r\n", b"\r\n", content)


def test_header_fields_unfold_and_stop_at_the_body() -> None:
    raw = (b"From: a@b.test\r\nDKIM-Signature: v=1; d=b.test;\r\n\ts=sel; h=from\r\n\r\n"
           b"Body: not a header\r\n")
    fields = header_fields(raw)
    assert [f.name for f in fields] == ["From", "DKIM-Signature"]
    assert tags(fields[1].value) == {"v": "1", "d": "b.test", "s": "sel", "h": "from"}


def test_from_with_deeply_nested_comments_is_bounded() -> None:
    value = "(" * 5000 + "x" + ")" * 5000 + " ann@pass.test"
    domains, count = from_domains(header_fields(f"From: {value}\r\n\r\n".encode()))
    assert count == 1 and domains in ([], ["pass.test"])


def test_dmarc_record_parsing() -> None:
    record = parse_record("v=DMARC1; p=quarantine; sp=reject; pct=25; adkim=s")
    assert record is not None and (record.policy, record.subdomain_policy, record.pct,
                                   record.adkim, record.aspf) == ("quarantine", "reject",
                                                                  25, "s", "r")
    assert parse_record("v=spf1 -all") is None
    assert parse_record("v=DMARC1; p=bogus") is None
    fallback = parse_record("v=DMARC1; p=bogus; rua=mailto:r@x.test")
    assert fallback is not None and fallback.policy == "none"
