"""Tokens the statistical model learns from.

A message becomes a set of strings: words of the body and subject, words of selected header
fields, facts about the delivery path (Received), the sender (From/Reply-To/To/Message-ID/
Date/X-Mailer), links (host, domain, path pieces) and the MIME structure. Tokens are
prefixed by where they came from (`subject:`, `from:`, `url:` ...) so the same word can carry
different weight in different places. A message contributes each token once.

Deliberately left out (they describe the mailbox the corpus was collected from, not the mail,
so a filter in front of the mailbox never sees them and a model that learnt them would not
generalise): headers written after delivery (X-Status, X-Keywords, Delivery-Date, other
filters' X-Spam-* verdicts ...) and the `by` side of Received headers (the receiving site's
own hosts are the same for every message it gets).

TOKENIZER_VERSION names this token set; a model records the version it was trained with and
refuses to load under another, since its counts would not mean the same thing.
"""

from __future__ import annotations

import email.utils
import re

from filter_server.message import ParsedMessage
from filter_server.textscan import find_emails, find_hosts, first_address, time_zone

TOKENIZER_VERSION = "mailwarden-tokens/2"

MAX_BODY_CHARS = 65536
MAX_TOKENS_PER_HEADER = 40
MAX_RECEIVED = 12          # Received headers looked at (the newest first)
MAX_URIS = 64              # links whose host and path pieces are tokenized
MAX_BODY_ADDRESSES = 20    # e-mail addresses in the body tokenized
MIN_WORD, MAX_WORD = 3, 20

# Headers whose words are informative.
WORD_HEADERS = frozenset((
    "from", "to", "cc", "reply-to", "return-path", "sender", "x-mailer", "user-agent",
    "content-type", "content-transfer-encoding", "mime-version", "precedence", "list-id",
    "list-unsubscribe", "x-mailing-list", "x-priority", "x-msmail-priority", "organization",
    "errors-to", "x-beenthere", "x-mailman-version", "importance", "x-originating-ip",
))
# Written by the mailbox, the mail client or other filters after delivery (see above).
POST_DELIVERY_HEADERS = frozenset((
    "x-keywords", "x-status", "status", "x-uid", "delivery-date", "lines", "content-length",
    "x-evolution", "x-mozilla-status", "x-mozilla-status2", "x-spam-status", "x-spam-flag",
    "x-spam-level", "x-spam-checker-version", "x-spam", "x-spam-score", "x-spam-report",
    "x-spam-prev-content-type", "x-spam-prev-content-transfer-encoding", "x-spam-tests",
    "x-virus-scanned",
))

# Patterns whose plain `re` form is quadratic on crafted text (a 64 KB body of "a…@b…"
# took 28 s) are linear scanners in filter_server/textscan.py, which give the same matches:
# hosts `[a-z0-9][a-z0-9.-]*\.[a-z]{2,}` (find_hosts), body addresses
# `[\w.+-]+@[\w-]+(?:\.[\w-]+)+` (find_emails), the first address of a header
# `[\w.+=-]+@[\w.-]+` (first_address) and the Date's zone (time_zone). Every pattern left
# here cannot fail after a long scan (see textscan's docstring).
_WORD = re.compile(r"[^\s<>\"'(){}\[\],;:=]+")
_EDGE = ".!?*-_/\\|#~`^+"
_IP = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.\d{1,3}\b")
_IP_FULL = re.compile(r"\[?\d{1,3}(?:\.\d{1,3}){3}\]?")
_RECEIVED_FROM = re.compile(r"from\s+(\S+)(?:\s+\(([^)]*)\))?")
_RECEIVED_BY = re.compile(r"\sby\s")
_RECEIVED_WITH = re.compile(r"\swith\s+(\w+)")
_SUBJECT_PUNCT = re.compile(r"[!$?*%.]{2,}|[!$]")
_DATE_YEAR = re.compile(r"\b(\d{2,4})\s+\d{1,2}:\d\d")
_ALNUM = re.compile(r"[0-9a-z]+")
_HEX_DIGITS = frozenset("0123456789abcdef")
_DIGITS = re.compile(r"[\d.]+")
_URL_PIECES = re.compile(r"[/?&=.#_-]+")
_CHARSET = re.compile(r'charset="?([\w-]+)')
_BOUNDARY = re.compile(r'boundary="?([^";]+)')
_LOCAL_DIGITS = re.compile(r"\d{3,}")
_SKEW_BUCKETS = ((-2, "future"), (1, "1h"), (6, "6h"), (24, "1d"), (24 * 7, "1w"),
                 (24 * 60, "2m"))


def _words(text: str) -> list[str]:
    return [w.strip(_EDGE) for w in _WORD.findall(text.lower())]


def _shape(text: str) -> str:
    """The format of an identifier: each run of letters and digits becomes `x` when it could
    be a hex number and `a` otherwise (`012d13b1$7be63ba0@...` -> `x$x`)."""
    return _ALNUM.sub(_shape_run, text.lower())[:20]


def _shape_run(run: re.Match) -> str:
    return "x" if _HEX_DIGITS.issuperset(run.group()) else "a"


def _domain(host: str) -> str:
    labels = host.rsplit(".", 2)
    return ".".join(labels[-2:])


def _address(value: str) -> str:
    found = first_address(value)
    return found.lower().strip(".") if found else ""


def tokenize(msg: ParsedMessage) -> set[str]:
    out = _body_tokens(msg.body_text[:MAX_BODY_CHARS])
    add = out.add
    _subject_tokens(msg.header("subject"), add)
    first_received = _header_tokens(msg, add)
    _date_tokens(msg.header("date"), first_received, add)
    _sender_tokens(msg, add)
    _link_tokens(msg, add)
    ctype = msg.header("content-type").lower()
    charset = _CHARSET.search(ctype)
    if charset:
        add("charset:" + charset.group(1))
    boundary = _BOUNDARY.search(ctype)
    if boundary:
        add("boundary-shape:" + _shape(boundary.group(1)))
    add(f"html:{msg.html_present}")
    add(f"parts:{min(msg.part_count, 10)}")
    add(f"links:{min(len(msg.uris), 20) // 5 * 5}")
    for ctype in msg.attachments[:8]:
        add("attachment:" + ctype)
    if msg.malformed:
        add("mime:malformed")
    return out


def _body_tokens(body: str) -> set[str]:
    """The body's tokens, as a new set (the other token kinds are added to it)."""
    lower = body.lower()
    chunks = _WORD.findall(lower)
    distinct = set(chunks)
    # Most words repeat: strip each one once. Set comprehensions, no per-word method calls.
    words = {word.strip(_EDGE) for word in distinct}
    out = {word for word in words if MIN_WORD <= len(word) <= MAX_WORD}
    for word in [word for word in words if len(word) > MAX_WORD]:
        # long words are mostly unique; their shape still says something
        out.add(f"skip:{word[0]}{len(word) // 10 * 10}")
    sample = body[:4000]
    if sample:
        # share of non-ASCII text, from the UTF-8 length (cheap: no per-character loop)
        extra = len(sample.encode("utf-8", "replace")) - len(sample)
        if extra:
            out.add(f"body:8bit%{min(extra * 100 // len(sample), 100) // 10 * 10}")
    ats = lower.count("@")
    if not ats:
        return out
    # The first MAX_BODY_ADDRESSES matches of _EMAIL in the body, without running _EMAIL
    # over all of it (it retries at every position of every word): a match is made of
    # [\w.+@-], characters _WORD never splits on, so each one lies inside one chunk, and
    # matching chunk by chunk, in order, finds the very same matches. With no more @ than
    # addresses wanted, every match counts, so the distinct chunks holding an @ will do.
    if ats <= MAX_BODY_ADDRESSES:
        holding = [chunk for chunk in distinct if "@" in chunk]
    else:
        holding = [chunk for chunk in chunks if "@" in chunk]
    found: list[str] = []
    for chunk in holding:
        found += find_emails(chunk, MAX_BODY_ADDRESSES - len(found))
        if len(found) >= MAX_BODY_ADDRESSES:
            break
    for address in found[:MAX_BODY_ADDRESSES]:
        local, _, domain = address.partition("@")
        out.add("email-dom:" + domain)
        out.add("email-local:" + local)
    return out


def _subject_tokens(subject: str, add) -> None:
    for word in _words(subject):
        if word:
            add("subject:" + word)
    for run in _SUBJECT_PUNCT.findall(subject):
        add("subject-punct:" + run[:5])
    letters = [c for c in subject if c.isalpha()]
    if letters:
        add(f"subject-upper:{sum(c.isupper() for c in letters) * 10 // len(letters)}")
    if not subject.strip():
        add("subject:<empty>")


def _header_tokens(msg: ParsedMessage, add) -> str | None:
    """Tokens of every header; returns the date part of the newest Received header."""
    nreceived = 0
    first_received = None
    for name, value in msg.headers:
        lname = name.lower()
        if lname in POST_DELIVERY_HEADERS:
            continue
        add("header:" + lname)
        if lname in WORD_HEADERS:
            for word in _words(value)[:MAX_TOKENS_PER_HEADER]:
                if 2 <= len(word) <= 40:
                    add(f"{lname}:{word}")
        elif lname == "received":
            nreceived += 1
            if nreceived == 1:
                first_received = value.rpartition(";")[2]
            if nreceived <= MAX_RECEIVED:
                _received_tokens(value.lower(), add)
        elif lname == "message-id":
            local, _, domain = value.strip().strip("<>").rpartition("@")
            domain = domain.strip("> ").lower()[:60]
            add("message-id:" + domain)
            add("message-id-shape:" + _shape(local))
            if "." not in domain:
                add("message-id:nodot")
    add(f"received:count:{min(nreceived, 12)}")
    mailer = msg.header("x-mailer") or msg.header("user-agent")
    add("x-mailer-full:" + (_DIGITS.sub("#", mailer.lower())[:60] if mailer else "none"))
    return first_received


def _received_tokens(value: str, add) -> None:
    # Only the sending side ("from ..."): the "by" side names the receiving site itself.
    sent_from = _RECEIVED_BY.split(value, 1)[0]
    for host in find_hosts(sent_from)[:8]:
        add("received:" + host)
        if host.count(".") > 1:
            add("received:" + _domain(host))
    for a, b, c in _IP.findall(sent_from)[:4]:
        add(f"received:ip:{a}.{b}.{c}")
        add(f"received:ip:{a}.{b}")
    protocol = _RECEIVED_WITH.search(value)
    if protocol:
        add("received:with:" + protocol.group(1))
    clause = _RECEIVED_FROM.match(value.lstrip())
    if clause is None:
        return
    helo, detail = clause.group(1), clause.group(2)
    if _IP_FULL.fullmatch(helo):
        add("received:helo-ip")
    elif "." not in helo:
        add("received:helo-nodot")
    if not detail:
        add("received:no-detail")
        return
    if "unknown" in detail:
        add("received:rdns-unknown")
    rdns = find_hosts(detail)
    if rdns and "." in helo:
        suffix = _domain(helo.strip("[]"))
        add("received:helo-rdns-match" if any(h.endswith(suffix) for h in rdns)
            else "received:helo-rdns-differ")
    elif not rdns and _IP.search(detail):
        add("received:no-rdns")


def _date_tokens(date: str, first_received: str | None, add) -> None:
    if not date:
        add("date:missing")
        return
    add("date:tz:" + (time_zone(date) or "none"))
    year = _DATE_YEAR.search(date)
    if year:
        add("date:year:" + year.group(1))
    sent = email.utils.parsedate_tz(date)
    if sent is None:
        add("date:unparseable")
        return
    received = email.utils.parsedate_tz(first_received) if first_received else None
    if received is None:
        return
    try:
        skew = (email.utils.mktime_tz(received) - email.utils.mktime_tz(sent)) / 3600
    except (OverflowError, ValueError):
        add("date:unparseable")
        return
    # how long the message claims to have been on its way: spamware often forges the Date
    for limit, name in _SKEW_BUCKETS:
        if skew < limit:
            add("date:skew:" + name)
            return
    add("date:skew:old")


def _sender_tokens(msg: ParsedMessage, add) -> None:
    sender = msg.from_address
    from_value = msg.header("from").strip()
    if from_value.startswith("<") or from_value.lower() == sender:
        add("from:noname")
    local, _, domain = sender.partition("@")
    if domain:
        add("from-dom:" + domain)
        if domain.count(".") > 1:
            add("from-dom:" + _domain(domain))
        add("from-tld:" + domain.rpartition(".")[2])
    if _LOCAL_DIGITS.search(local):
        add("from:local-digits")
    reply_to = msg.header("reply-to")
    if reply_to:
        add("reply-to:same" if _address(reply_to) == sender else "reply-to:differs")
    to = msg.header("to")
    if not to.strip():
        add("to:none")
    elif "undisclosed" in to.lower():
        add("to:undisclosed")
    add(f"to:count:{min(to.count('@'), 5)}")


def _link_tokens(msg: ParsedMessage, add) -> None:
    for host in msg.uri_hosts[:MAX_URIS]:
        add("url:" + host)
        if host.count(".") > 1:
            add("url:" + _domain(host))
        add("url-tld:" + host.rpartition(".")[2])
        if _IP_FULL.fullmatch(host):
            add("url:ip-host")
    for uri in msg.uris[:MAX_URIS]:
        lower = uri.lower()
        scheme, sep, rest = lower.partition(":")
        add("url-scheme:" + (scheme if sep and len(scheme) < 10 else "none"))
        authority, _, path = (rest.lstrip("/") if sep else lower).partition("/")
        for piece in _URL_PIECES.split(path)[:10]:
            if 3 <= len(piece) <= 20:
                add("url-path:" + piece)
        if "%" in path:
            add("url:percent-encoded")
        if "@" in authority and scheme != "mailto":
            add("url:userinfo")
