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


# --- never an error on hostile input: the evaluation phase with every key "found" ------
_KEY = None


def _any_key() -> bytes:
    global _KEY
    if _KEY is None:
        from testkit.dns import dkim_key
        _KEY = dkim_key("s", "x.test").record.encode()
    return _KEY


class _AllKeys(dict):
    def get(self, name, default=None):  # every name has the same (real) key
        from filter_server.auth.resolver import Answer
        return Answer("ok", (_any_key(),))

    def items(self):
        return []


_SIGNED_SHAPES = st.sampled_from([
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=x.test; s=s; h=from:to;"
    b" bh=AAAA; b=AAAA\r\n",
    b"DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=x.test; s=s; l=5; h=from;"
    b" bh=; b=\r\n",
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=x.test; s=s; b=AAAA\r\n"
    b"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=x.test; s=s;"
    b" h=from; bh=AAAA; b=AAAA\r\nARC-Authentication-Results: i=1; mx; dkim=pass\r\n",
    b"From: a@x.test, b@y.test\r\nFrom: (((((c@z.test\r\n",
])


@settings(max_examples=200, deadline=None)
@given(_SIGNED_SHAPES, st.binary(max_size=2048))
def test_evaluation_never_raises(shape: bytes, tail: bytes) -> None:
    from filter_server.auth.evaluate import AuthSettings, evaluate
    from filter_server.auth.gather import Evidence

    raw = shape + b"From: a@x.test\r\n" + tail
    fields = header_fields(raw)
    evidence = Evidence(fields, bulk=True)
    evidence.keys = _AllKeys()
    evidence.from_domains, evidence.from_count = from_domains(fields)
    outcome = evaluate(raw, evidence, AuthSettings(enabled=True, bulk_gate=True),
                       body_text=tail.decode("latin-1"))
    assert "\n" not in outcome.header and "\r" not in outcome.header
