"""Address normalisation (mailwarden.addresses), the one function store and filter share:
every ordinary spelling of one recipient is one key (issue 20, item 3), different real
recipients stay different keys, and what is not an address says why."""

from __future__ import annotations

import pytest

from mailwarden.addresses import AddressInvalid, normalize_address, normalize_scope

SAME_RECIPIENT = [
    # (spelling, the key it must have)
    ("reader@example.com", "reader@example.com"),
    ("<reader@example.com>", "reader@example.com"),                 # RCPT TO forward-path
    (" <reader@example.com> ", "reader@example.com"),
    ("<@relay.example,@hop.example:reader@example.com>", "reader@example.com"),  # source route
    ('"reader"@example.com', "reader@example.com"),                 # needless quotes
    ('"re\\ader"@example.com', "reader@example.com"),               # quoted-pair
    ('<"Reader"@Example.COM>', "reader@example.com"),
    ("READER@EXAMPLE.COM.", "reader@example.com"),
    ("ｒｅａｄｅｒ＠ｅｘａｍｐｌｅ．ｃｏｍ", "reader@example.com"),        # full-width forms
    ("reader@ｅｘａｍｐｌｅ。ｃｏｍ", "reader@example.com"),                # ideographic full stop
    # IDNA2008 / UTS #46: U-label and A-label are one domain, in A-label form
    ("leser@straße.de", "leser@xn--strae-oqa.de"),
    ("leser@xn--strae-oqa.de", "leser@xn--strae-oqa.de"),
    ("leser@XN--STRAE-OQA.DE", "leser@xn--strae-oqa.de"),
    ("leser@STRAẞE.DE", "leser@xn--strae-oqa.de"),                  # capital sharp s
    ("jürgen@Bücher.example", "jürgen@xn--bcher-kva.example"),
    # caseless local parts beyond lower(): ß and SS fold alike
    ("STRASSE@example.com", "strasse@example.com"),
    ("straße@example.com", "strasse@example.com"),
    ("Straẞe@example.com", "strasse@example.com"),
    # things that are NOT rewritten: tags and dots are distinct mailboxes elsewhere
    ("ann+news@example.com", "ann+news@example.com"),
    ("first.last@gmail.com", "first.last@gmail.com"),
    ("a..b@docomo.ne.jp", "a..b@docomo.ne.jp"),
    # a local part that needs its quotes keeps them, in one canonical form
    ('"john doe"@example.com', '"john doe"@example.com'),
    ('"John\\ Doe"@example.com', '"john doe"@example.com'),
    ('"a@b"@example.com', '"a@b"@example.com'),
    ('"a\\"b"@example.com', '"a\\"b"@example.com'),
    # address literals
    ("ann@[192.0.2.1]", "ann@[192.0.2.1]"),
    ("ann@[IPv6:2001:DB8:0::1]", "ann@[IPv6:2001:db8::1]"),
]


@pytest.mark.parametrize("given, key", SAME_RECIPIENT)
def test_every_spelling_of_a_recipient_is_one_key(given, key):
    assert normalize_address(given) == key
    assert normalize_address(key) == key  # idempotent: a stored key normalises to itself


def test_straße_and_strasse_are_different_domains():
    """The IDNA 2003 codec maps straße.de to strasse.de — a different domain with another
    owner: one person's unsubscribe must not suppress a stranger."""
    assert normalize_address("leser@straße.de") != normalize_address("leser@strasse.de")


@pytest.mark.parametrize("bad, why", [
    ("", "empty"),
    ("no-at-sign", "no '@'"),
    ("@example.com", "empty local part"),
    ("ann@", "empty domain"),
    ("a b@example.com", "unquoted local part"),
    ("ann@exa mple.com", "IDNA2008"),
    ("Ann <ann@example.com>", "display name"),
    ("<ann@example.com", "closing '>'"),
    ("<>", "null path"),
    ("ann@b@example.com", "more than one '@'"),
    ('"unterminated@example.com', "unterminated"),
    ('"a"b@example.com', "followed directly"),
    ("ann@-bad-.com", "IDNA2008"),
    ("x" * 65 + "@example.com", "longer than 64"),
    ("ann@example..com", "IDNA2008"),
    ("ann@xn--ls8h.la", "IDNA2008"),                    # an emoji domain: not IDNA2008
    ("ann@under_score.example", "IDNA2008"),
    ("ann@[300.1.1.1]", "address literal"),
    ('"a\nb"@example.com', "control character"),
    ("a" * 5000 + "@example.com", "longer than any address"),
])
def test_what_is_not_an_address_says_why(bad, why):
    with pytest.raises(AddressInvalid) as info:
        normalize_address(bad)
    assert why in str(info.value)
    assert len(str(info.value)) < 400  # long input is not echoed whole


def test_scopes():
    assert normalize_scope("Newsletter") == "newsletter"
    assert normalize_scope("ｎｅｗｓ") == "news"
    assert normalize_scope("*") == "*"
    assert normalize_scope("", allow_empty=True) == ""
    for bad in ("", "has space", "-leading", "x" * 129):
        with pytest.raises(AddressInvalid):
            normalize_scope(bad)


def _outcome(normalise, text: str) -> str:
    try:
        return "ok:" + normalise(text)
    except AddressInvalid:
        return "invalid"


# Inputs near the fast path's edges: every ASCII class it must accept or pass on (upper
# case, specials that need quoting, quotes, brackets, dots, hyphens, "xn--", whitespace).
_EDGY = "aZ0.-_+@\"<>()[],;:\\ \t!#x--n/=?^`{|}~%&'*"


def test_the_ascii_fast_path_answers_exactly_as_the_full_normalisation() -> None:
    """normalize_address returns already-canonical ASCII addresses without the Unicode
    work; for any input it must give what the full path gives (the same key, or the same
    refusal), or a suppression could silently stop applying."""
    import random

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mailwarden.addresses import _normalize_fully
    rng = random.Random(15)
    samples = ["Ann@Example.COM", "a@b", "-a@b.c", "a@-b.c", "a@b-.c", "a@xn--bcher-kva.example",
               "a@b.xn--p1ai", "a@axn--b.c",
               "a@xn--zz.example", "a@b.xn--.c", "a@XN--A.com", "a@xn--ls8h.la", "a.@b.c", "a..b@c.d", "a@b.c.", "<a@b.c>",
               "x" * 64 + "@b.c", "x" * 65 + "@b.c", "a@" + "b" * 63 + ".c",
               "a@" + "b" * 64 + ".c", "a@" + ".".join(["b" * 63] * 4), " a@b.c", "a@b.c "]
    samples += ["".join(rng.choice(_EDGY) for _ in range(rng.randint(1, 12)))
                for _ in range(20000)]
    for text in samples:
        assert _outcome(normalize_address, text) == _outcome(_normalize_fully, text), text

    @settings(max_examples=2000, deadline=None)
    @given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=80))
    def same(text: str) -> None:
        assert _outcome(normalize_address, text) == _outcome(_normalize_fully, text)
    same()
