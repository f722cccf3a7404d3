"""Hostile messages the fault suite's barrage found to cost seconds of CPU each (a small
message pinning a worker is a denial of service): HTML with unclosed comments and
scripts (quadratic regex, 30 s for 270 KB), multiparts nested a thousand deep (quadratic
in the stdlib parser, 1.3 s for 56 KB), and one header of thousands of encoded words
(quadratic RFC 2047 decoding, 3–7 s for 700 KB). Each must now parse in well under a
second; the bounds below are 10–100× the measured times, so a busy machine cannot make
them flake, while the old code fails every one of them."""

from __future__ import annotations

import io
import time

from filter_server.message import drop_hidden, parse_message

HTML_HEAD = b"From: a@example.com\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"


def _timed(raw: bytes):
    started = time.process_time()
    parsed = parse_message(raw)
    return parsed, time.process_time() - started


def test_unclosed_comments_and_scripts_take_linear_time() -> None:
    raw = HTML_HEAD + ("<p>shown</p><!-- never closed " + "<script>" * 10_000
                       + "x" * 200_000).encode()
    parsed, seconds = _timed(raw)
    assert seconds < 1.0, f"{seconds:.2f} s of CPU for {len(raw)} bytes"
    # An unclosed opener is kept as text (its tags stripped), and what follows it is read.
    assert parsed.body_text.startswith("shown")
    assert "x" * 1000 in parsed.body_text


def test_hidden_html_is_still_dropped() -> None:
    markup = ("<style>p{color:red}</style><p>visible</p><SCRIPT>steal()</Script > and "
              "<!-- a comment --> more<script>unclosed <!-- also")
    assert drop_hidden(markup).split() == ["<p>visible</p>", "and", "more<script>unclosed",
                                           "<!--", "also"]


def test_closed_hidden_html_after_an_unclosed_opener_is_still_dropped() -> None:
    markup = "<style>p{} <p>kept</p> <script>x()</script> and <!-- c --> end"
    assert drop_hidden(markup).split() == ["<style>p{}", "<p>kept</p>", "and", "end"]


def test_deep_multipart_nesting_takes_linear_time() -> None:
    out = io.BytesIO(b"From: deep@example.com\r\nSubject: nesting\r\n")
    for level in range(1000):
        out.write(f"Content-Type: multipart/mixed; boundary=\"n{level}\"\r\n\r\n"
                  f"--n{level}\r\n".encode())
    out.write(b"Content-Type: text/plain\r\n\r\nviagra at the bottom\r\n")
    parsed, seconds = _timed(out.getvalue())
    assert seconds < 0.5, f"{seconds:.2f} s of CPU"
    assert parsed.malformed and "viagra" in parsed.body_text


def test_ordinary_multiparts_are_still_parsed_as_mime() -> None:
    parts = "".join(f"--b\r\nContent-Type: multipart/alternative; boundary=\"a{i}\"\r\n\r\n"
                    f"--a{i}\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n--a{i}--\r\n"
                    for i in range(20))
    raw = (b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           + parts.encode() + b"--b--\r\n")
    parsed = parse_message(raw)
    assert not parsed.malformed and parsed.part_count == 20


def test_a_header_of_thousands_of_encoded_words_takes_linear_time() -> None:
    raw = (b"From: f@example.com\r\nSubject: s" + b"\r\n =?utf-8?B?dmlhZ3Jh?=" * 30_000
           + b"\r\n\r\nbody\r\n")
    parsed, seconds = _timed(raw)
    assert seconds < 0.5, f"{seconds:.2f} s of CPU"
    # adjacent encoded words join without spaces (RFC 2047)
    assert parsed.header("Subject").startswith("s viagraviagra")


def _large_message(attachment_bytes: int, text_after: bytes = b"") -> bytes:
    """A report with a base64 attachment of `attachment_bytes` (lines of 76 characters)."""
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    return (b"From: reports@example.com\r\nTo: team@example.org\r\nSubject: monthly report\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n"
            b"--XX\r\nContent-Type: text/plain\r\n\r\nsee http://reports.example.com/q3 "
            b"attached\r\n--XX\r\nContent-Type: application/pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + line * (attachment_bytes // len(line)) + b"--XX\r\n" + text_after + b"--XX--\r\n")


def test_a_large_message_is_parsed_in_bounded_memory_and_time() -> None:
    """Only the first MAX_PARSE_BYTES are parsed: a 24 MiB message took 1 s and 190 MiB
    (eight times its size) before, and a burst of them drove a worker past its pod's
    memory limit (the fault suite's large_burst scenario)."""
    import tracemalloc

    raw = _large_message(24 * 1024 * 1024)
    tracemalloc.start()
    try:
        parsed, seconds = _timed(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # About eight times what is parsed (4 MiB), not eight times the message (24 MiB).
    assert peak < 48 * 2**20, f"{peak / 2**20:.0f} MiB for a {len(raw) >> 20} MiB message"
    assert seconds < 1.0, f"{seconds:.2f} s of CPU"
    # What comes before the cut is read as usual, and the cut itself is not a defect.
    assert "see http://reports.example.com/q3 attached" in parsed.body_text
    assert parsed.uri_hosts == ["reports.example.com"]
    assert parsed.attachments == ["application/pdf"]
    assert parsed.headers[2] == ("Subject", "monthly report")
    assert not parsed.malformed


def test_text_beyond_the_parsed_start_is_not_read() -> None:
    from filter_server.message import MAX_PARSE_BYTES

    late = b"Content-Type: text/plain\r\n\r\nviagra after the attachment\r\n"
    small = parse_message(_large_message(64 * 1024, late))
    assert "viagra after the attachment" in small.body_text
    large = parse_message(_large_message(MAX_PARSE_BYTES, late))
    assert "viagra" not in large.body_text
    assert "see http://reports.example.com/q3 attached" in large.body_text
