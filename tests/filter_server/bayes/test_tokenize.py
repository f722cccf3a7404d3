"""The tokenizer: what a message turns into, and what it deliberately leaves out."""

from __future__ import annotations

from filter_server.bayes.tokenize import tokenize
from filter_server.message import parse_message

RECEIVED = (
    "Received: from mx.receiver.example (mx.receiver.example [10.0.0.1])\n"
    "\tby store.receiver.example (Postfix) with ESMTP id 1\n"
    "\tfor <bob@receiver.example>; Tue, 3 Sep 2002 15:02:40 -0500\n"
    "Received: from relay.sender.example (relay.sender.example [192.0.2.10])\n"
    "\tby mx.receiver.example (8.12.2) with ESMTP id 2; Tue, 3 Sep 2002 15:02:38 -0500\n"
)


def tokens(headers: str = "", body: str = "Plain words here.", *,
           date: str = "Tue, 03 Sep 2002 13:04:31 -0700") -> set[str]:
    raw = (f"{RECEIVED}From: Alice Example <alice@mail.sender.example>\n"
           f"To: bob@receiver.example\nSubject: Quarterly report ready\n"
           f"Message-Id: <20020903.4711@mail.sender.example>\n"
           f"{'Date: ' + date + chr(10) if date else ''}"
           f"{headers}Content-Type: text/plain; charset=us-ascii\n\n{body}\n")
    return tokenize(parse_message(raw.encode()))


def test_body_words_are_lowercased_and_bounded():
    t = tokens(body="Meeting AGENDA attached, ok? "
               "Pneumonoultramicroscopicsilicovolcanoconiosis is long.")
    assert {"meeting", "agenda", "attached"} <= t
    assert "ok" not in t                       # shorter than 3 characters
    assert "skip:p40" in t                     # 45 characters: only its shape is kept
    assert not any("pneumono" in x for x in t if not x.startswith("skip:"))


def test_subject_words_and_shape():
    t = tokenize(parse_message(b"Subject: FREE money!!! Act now\n\nhello there\n"))
    assert {"subject:free", "subject:money", "subject:act", "subject:now"} <= t
    assert "subject-punct:!!!" in t
    assert "subject-upper:3" in t              # 5 of 14 letters are capitals
    assert "subject:<empty>" in tokenize(parse_message(b"Subject: \n\nhello\n"))


def test_selected_header_words_and_header_names():
    t = tokens("X-Mailer: Foomail 4.2 (Linux)\nX-Random-Header: ignored words\n")
    assert "x-mailer:foomail" in t
    assert "x-mailer-full:foomail # (linux)" in t
    assert "header:x-random-header" in t
    assert not any(x.startswith("x-random-header:") for x in t)   # only names, not words
    assert "from:alice@mail.sender.example" in t


def test_headers_written_after_delivery_are_ignored():
    t = tokens("X-Spam-Status: Yes, hits=12.3\nX-Keywords: junk\nX-Status: RO\n"
               "Delivery-Date: Tue Sep  3 15:02:41 2002\n")
    assert not any("x-spam" in x or "x-keywords" in x or "x-status" in x
                   or "delivery-date" in x for x in t)


def test_received_keeps_the_sending_side_only():
    t = tokens()
    assert "received:relay.sender.example" in t
    assert "received:sender.example" in t
    assert "received:ip:192.0.2" in t and "received:ip:192.0" in t
    assert "received:helo-rdns-match" in t
    assert "received:with:esmtp" in t
    assert "received:count:2" in t
    # the receiving site's own hosts ("by ...") say nothing about the message
    assert "received:store.receiver.example" not in t
    # ...but a hop *from* one of them is the sending side of that hop
    assert "received:mx.receiver.example" in t


def test_received_facts_about_the_relay():
    t = tokens("Received: from [203.0.113.5] (unknown [203.0.113.5]) by mx.example with SMTP;"
               " Tue, 3 Sep 2002 15:00:00 -0500\n")
    assert {"received:helo-ip", "received:rdns-unknown", "received:with:smtp"} <= t
    t = tokens("Received: from friendly (host.example [198.51.100.7]) by mx.example;"
               " Tue, 3 Sep 2002 15:00:00 -0500\n")
    assert "received:helo-nodot" in t


def test_message_id_domain_and_shape():
    t = tokens()
    assert "message-id:mail.sender.example" in t
    assert "message-id-shape:x.x" in t
    assert "message-id:nodot" not in t
    t = tokenize(parse_message(b"Message-Id: <012d13b14a4b$6178b2c2$7be63ba0@fjknbj>\n\nx\n"))
    assert {"message-id:fjknbj", "message-id:nodot", "message-id-shape:x$x$x"} <= t


def test_date_zone_year_and_skew_against_the_newest_received():
    t = tokens()   # sent 13:04 -0700 = 20:04 UTC, received 20:02 UTC: clocks differ a bit
    assert {"date:tz:-0700", "date:year:2002", "date:skew:1h"} <= t
    assert "date:skew:future" in tokens(date="Wed, 04 Sep 2002 01:00:00 +0000")
    assert "date:skew:1d" in tokens(date="Tue, 03 Sep 2002 07:00:00 +0000")
    assert "date:skew:old" in tokens(date="Thu, 06 Jan 2000 20:55:54 +1000")
    assert "date:missing" in tokens(date="")
    assert "date:unparseable" in tokens(date="sometime last week")


def test_sender_facts():
    t = tokens("Reply-To: <other@freemail.example>\n")
    assert {"from-dom:mail.sender.example", "from-dom:sender.example", "from-tld:example",
            "reply-to:differs", "to:count:1"} <= t
    assert "from:noname" not in t
    raw = (b"From: <sales12345@bulk.example>\nTo: undisclosed-recipients:;\n"
           b"Reply-To: sales12345@bulk.example\n\nbuy\n")
    t = tokenize(parse_message(raw))
    assert {"from:noname", "from:local-digits", "to:undisclosed", "reply-to:same"} <= t
    assert "to:none" in tokenize(parse_message(b"From: a@b.example\n\nhi\n"))


def test_links():
    body = ("See http://www.shop.example/deals/today.html?id=5 and "
            "http://192.0.2.7/win and http://user@evil.example/login and "
            "www.nosheme.example/path/pieces")
    t = tokens(body=body)
    assert {"url:www.shop.example", "url:shop.example", "url-tld:example",
            "url-path:deals", "url-path:today", "url-path:html", "url-scheme:http",
            "url:192.0.2.7", "url:ip-host", "url:userinfo", "url-path:pieces",
            "url-scheme:none"} <= t
    mailto = tokenize(parse_message(
        b"Content-Type: text/html\n\n<a href=\"mailto:me@list.example?subject=remove\">x</a>"))
    assert "url-scheme:mailto" in mailto and "url:userinfo" not in mailto


def test_structure_tokens():
    raw = (b"Content-Type: multipart/mixed; boundary=\"----=_NextPart_000_00B2\"\n\n"
           b"------=_NextPart_000_00B2\nContent-Type: text/html; charset=iso-8859-1\n\n"
           b"<p>Hello <b>friend</b></p>\n"
           b"------=_NextPart_000_00B2\nContent-Type: application/pdf\n"
           b"Content-Transfer-Encoding: base64\n\nJVBERi0=\n------=_NextPart_000_00B2--\n")
    t = tokenize(parse_message(raw))
    assert {"html:True", "parts:2", "attachment:application/pdf", "links:0",
            "boundary-shape:----=_a_x_x"} <= t
    assert "charset:iso-8859-1" in tokenize(parse_message(
        b"Content-Type: text/plain; charset=\"iso-8859-1\"\n\ncaf\xe9\n"))


def test_non_ascii_share_and_addresses_in_the_body():
    t = tokens(body="Write to Sales.Desk@Offers.example today")
    assert {"email-dom:offers.example", "email-local:sales.desk"} <= t
    assert not any(x.startswith("body:8bit") for x in t)
    raw = "Subject: hi\nContent-Type: text/plain; charset=utf-8\n\n日本語のテキストです\n"
    t = tokenize(parse_message(raw.encode()))
    assert any(x.startswith("body:8bit%") and x != "body:8bit%0" for x in t)


def test_same_message_same_tokens_and_no_crash_on_garbage():
    assert tokens() == tokens()
    for raw in (b"", b"\x00\xff\xfe", b"Subject: =?bogus?Q?x?=\n\n",
                b"Content-Type: multipart/mixed\n\nno boundary at all"):
        assert isinstance(tokenize(parse_message(raw)), set)
