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


_PIECES = [b"A: b", b" c", b"\td", b"From x", b"B:", b"C:d:e", b"", b"\r", b"\n", b"x",
           b" ", b"From ", b"\xff", b"  \t"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=10),
       st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_linear_rfc822_parse_equals_dkimpys(pieces: list[bytes], separator: bytes) -> None:
    """Same headers and body as dkimpy's parser, or a MessageFormatError where dkimpy
    raised IndexError (a continuation line before any header)."""
    import dkim

    message = separator.join(pieces)

    def outcome(parse):
        try:
            return parse(message)
        except dkim.MessageFormatError:
            return "MessageFormatError"
        except IndexError:
            return "IndexError"

    ours, theirs = outcome(auth_dkim._rfc822_parse), outcome(auth_dkim.DKIMPY_RFC822_PARSE)
    assert ours == theirs or (ours, theirs) == ("MessageFormatError", "IndexError")


def test_a_large_body_is_canonicalized_without_an_object_per_line() -> None:
    """dkimpy split the whole message into lines: 20 MiB of short lines cost 640 MiB and
    20 s for any message with a DKIM-Signature, and its blank substitutions keep an object
    per match. Parsing and relaxed body canonicalization now peak within a few copies of
    the message."""
    import tracemalloc

    from dkim.canonicalization import Relaxed

    raw = (b"DKIM-Signature: v=1; d=example.com; s=sel; h=from; bh=YQ==; b=YQ==\r\n"
           b"From: a@example.com\r\n\r\n" + b"x \t\n" * (1024 * 1024))
    tracemalloc.start()
    try:
        headers, body = auth_dkim._rfc822_parse(raw)
        canonical = Relaxed.canonicalize_body(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [name for name, _ in headers] == [b"DKIM-Signature", b"From"]
    assert canonical == b"x\r\n" * (1024 * 1024)
    assert peak < 5 * len(raw), f"{peak / len(raw):.1f} times the message"


def test_a_header_block_beyond_what_authentication_reads_is_not_verified() -> None:
    import dkim

    raw = b"DKIM-Signature: v=1\r\n" + b"X: y\r\n" * 60_000 + b"\r\nbody\r\n"
    try:
        auth_dkim._rfc822_parse(raw)
    except dkim.MessageFormatError as exc:
        assert "header block over 262,144 bytes" in str(exc)
    else:
        raise AssertionError("a 360 KB header block was parsed")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b" ", b"\t", b"\r", b"\n", b"\r\n", b"x", b" \r\n"]),
                max_size=40),
       st.integers(min_value=1, max_value=4))
def test_blank_substitutions_in_slices_equal_the_whole(pieces: list[bytes],
                                                       repeat: int) -> None:
    content = b"".join(pieces) * (repeat * 600)  # over a slice (64 KiB) when repeated
    # the regex itself is quadratic on long blank runs; this reference is linear and equal
    # to it (test_linear_trailing_blank_strip_equals_the_regex checks that on short input)
    lines = content.split(b"\r\n")
    stripped = b"\r\n".join([line.rstrip(b" \t") for line in lines[:-1]] + lines[-1:])
    assert auth_dkim._strip_trailing_whitespace(content) == stripped
    assert auth_dkim._compress_whitespace(content) == re.sub(b"[\t ]+", b" ", content)
