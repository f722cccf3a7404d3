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

from filter_server.engine.message import drop_hidden, parse_message

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
    assert parsed.body_text == "shown"  # an unclosed comment hides the rest, as in a browser


def test_hidden_html_is_still_dropped() -> None:
    markup = ("<style>p{color:red}</style><p>visible</p><SCRIPT>steal()</Script > and "
              "<!-- a comment --> more<script>unclosed")
    assert drop_hidden(markup).split() == ["<p>visible</p>", "and", "more"]


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
