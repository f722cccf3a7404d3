"""The linear-time scanners give exactly what the patterns they replace gave (issue 20):
compared on generated text over the characters that matter to each pattern, plus the
cases that show why each scanner is written the way it is."""

from __future__ import annotations

import email.header
import email.message
import email.utils
import os
import re
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from filter_server.message import (MAX_UNCLOSED_ENCODED_WORDS, _HTML_BREAK, _HTML_TAG,
                                          address_of, decode_header_value, empty_comments,
                                          split_params)
from filter_server.textscan import (find_emails, find_hosts, first_address,
                                           sub_up_to_last, time_zone)

EXAMPLES = settings(max_examples=int(os.environ.get("MAILWARDEN_FUZZ_EXAMPLES", "500")),
                    deadline=None)

OLD_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
OLD_HOST = re.compile(r"[a-z0-9][a-z0-9.-]*\.[a-z]{2,}")
OLD_ADDRESS = re.compile(r"[\w.+=-]+@[\w.-]+")
OLD_TZ = re.compile(r"([+-]\d{4}|\b[A-Z]{2,4}\b)\s*(?:\(.*\))?\s*$")


def texts(alphabet: str, max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, max_size=max_size)


@EXAMPLES
@given(texts("ab_1é.+-@!/ \t"))
def test_find_emails_is_the_old_pattern(text: str) -> None:
    assert find_emails(text) == OLD_EMAIL.findall(text)
    assert find_emails(text, 2) == OLD_EMAIL.findall(text)[:2]


def test_find_emails_resumes_where_the_last_match_ended() -> None:
    # the second match starts with the "." right after the first one's domain
    assert find_emails("a@b.c.+x@d.e") == ["a@b.c", ".+x@d.e"] == \
        OLD_EMAIL.findall("a@b.c.+x@d.e")


@EXAMPLES
@given(texts("ab1.-xZ (")
       .map(str.lower))
def test_find_hosts_is_the_old_pattern(text: str) -> None:
    assert find_hosts(text) == OLD_HOST.findall(text)


@EXAMPLES
@given(texts("ab_1.+=-@!é "))
def test_first_address_is_the_old_pattern(text: str) -> None:
    found = OLD_ADDRESS.search(text)
    assert first_address(text) == (found.group(0) if found else None)


@EXAMPLES
@given(st.lists(st.sampled_from(["+0100", "-0500", "+12345", "GMT", "EST", "ABCDE", "A",
                                 " ", "  ", "(", ")", "(CET)", "x", "\n", "\r", "\t", "1",
                                 "Tue, 1 Oct 2002 10:00:00"]), max_size=10).map("".join))
def test_time_zone_is_the_old_pattern(date: str) -> None:
    found = OLD_TZ.search(date)
    assert time_zone(date) == (found.group(1) if found else None)


@EXAMPLES
@given(texts("<>/brpdivhX1 aé\n", 30))
def test_tag_stripping_is_the_old_substitution(markup: str) -> None:
    assert sub_up_to_last(_HTML_TAG, " ", markup) == _HTML_TAG.sub(" ", markup)
    assert sub_up_to_last(_HTML_BREAK, "\n", markup) == _HTML_BREAK.sub("\n", markup)


@EXAMPLES
@given(texts(';="\\ab= ', 30))
def test_parameters_are_split_like_the_stdlib(value: str) -> None:
    assert split_params(value) == email.message._parseparam(value)


def test_a_corpus_sized_parameter_list_is_split_like_the_stdlib() -> None:
    value = 'text/plain; a="x' + '; b=1' * 3000 + '"; charset=utf-8' + ';' * 4000
    assert split_params(value) == email.message._parseparam(value)


@EXAMPLES
@given(texts('()"\\\r<>@a. ,:;'))
def test_emptied_comments_leave_the_address_the_stdlib_finds(value: str) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))  # the stdlib parser recurses per "(" level
    try:
        expected = email.utils.parseaddr(value)[1]
    finally:
        sys.setrecursionlimit(limit)
    assert email.utils.parseaddr(empty_comments(value))[1] == expected


def test_a_from_of_hundreds_of_parentheses_gives_its_address() -> None:
    """Issue 20: ~500 "(" raised RecursionError (INTERNAL, and a 370 KB log line)."""
    assert address_of("Winner " + "(" * 600 + ")" * 600 + " <Win@Spam.example>") == \
        "win@spam.example"
    assert address_of("(" * 5000) == ""
    assert address_of('"(((" ' + "(" * 100 + ")" * 100 + " <a@[10.0.0.1]>") == \
        "a@[10.0.0.1]"
    assert address_of(":" * 1000 + "a@b.example") == "a@b.example"  # groups recurse too


@EXAMPLES
@given(st.lists(st.sampled_from(["=?utf-8?q?a_b?=", "=?utf-8?b?dmlhZ3Jh?=", "=?x?q?y", " ",
                                 "plain", "=?", "?=", "\t"]), max_size=12).map("".join))
def test_headers_decode_like_the_stdlib(value: str) -> None:
    try:
        expected = str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        expected = value
    assert decode_header_value(value) == expected


def test_a_header_of_unclosed_encoded_words_is_kept_raw() -> None:
    value = "=?a?q?x" * (MAX_UNCLOSED_ENCODED_WORDS + 1)
    assert decode_header_value(value) == value
    assert decode_header_value("=?utf-8?q?caf=C3=A9?= =?utf-8?q?x") == "café =?utf-8?q?x"
