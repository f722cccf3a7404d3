"""Tokens the statistical model learns from.

A message becomes a set of strings: words of the body and subject, words of selected header
fields, facts about the delivery path (Received: its shape, never its hosts), the sender
(From/Reply-To/To/Message-ID/Date), links (host and domain) and the MIME structure. Tokens are
prefixed by where they came from (`subject:`, `from:`, `url:` ...) so the same word can carry
different weight in different places. A message contributes each token once.

Words are folded before they become tokens (normalize.py): look-alike letters of other
scripts, invisible characters, accents, `i`/`l` confusion and leetspeak are undone, so
"Mlcrosoft", "DownIoad N0W" and "Pаypal" (Cyrillic а) give the tokens of the real words;
the trick itself becomes a token (`obf:leet`, `obf:mixed-script`, `obf:invisible`).

Deliberately left out, because they would not generalise beyond the mail a model was
trained on:
- what describes the mailbox the corpus was collected from, not the mail (a filter in front
  of the mailbox never sees it): headers written after delivery (X-Status, X-Keywords,
  Delivery-Date, other filters' X-Spam-* verdicts ...), the `by` side of Received headers
  (the receiving site's own hosts), the recipients' addresses (To, Cc);
- what describes the networks mail crossed on its way to the corpus rather than the mail:
  the hosts and IP ranges of the `from` side of Received headers (a different site sees
  other relays; 2002's spam networks are not today's), and the list and bounce addresses of
  Return-Path, Sender and Reply-To (which mailing lists the corpus owner read). Measured by
  cross-source validation (benchmarks/cross_source.py): dropping them raised the recall at
  0.1% false positives from 41% to 53% (train 2002 set 1, test set 2 and hard ham) and from
  44% to 59% (the other way round);
- the path of links (`/click`, `/images/x.gif`): newsletters and spam share the words, and
  they were the top clues of the cross-source false positives;
- what encodes the era or the software that wrote the mail rather than what it says: which
  headers are present (In-Reply-To or References were absent from every 2002 spam, common in
  today's), the character set (utf-8 was rare in 2002), the mailer name and version, the
  MIME boundary and Message-ID formats, the Date's year and time zone, the number of
  Received hops and their protocol names, link schemes (http then, https now), the share of
  non-ASCII text, mailing-list software headers (List-Id, X-Mailman-Version ...).

TOKENIZER_VERSION names this token set; a model records the version it was trained with and
refuses to load under another, since its counts would not mean the same thing.
"""

from __future__ import annotations

import email.utils
import re

from filter_server.bayes.normalize import fold, obfuscation, unleet_many
from filter_server.message import ParsedMessage
from filter_server.textscan import find_emails, find_hosts, first_address

TOKENIZER_VERSION = "mailwarden-tokens/4"

MAX_BODY_CHARS = 65536
MAX_TOKENS_PER_HEADER = 40
MAX_RECEIVED = 12          # Received headers looked at (the newest first)
MAX_URIS = 64              # links whose host and path pieces are tokenized
MAX_BODY_ADDRESSES = 20    # e-mail addresses in the body tokenized
MIN_WORD, MAX_WORD = 3, 20

# Headers whose words are informative (who sent it, and how urgent it claims to be).
WORD_HEADERS = frozenset(("from", "x-priority", "x-msmail-priority", "importance"))
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
# `[\w.+=-]+@[\w.-]+` (first_address). Every pattern left
# here cannot fail after a long scan (see textscan's docstring).
_WORD = re.compile(r"[^\s<>\"'(){}\[\],;:=]+")
_EDGE = ".!?*-_/\\|#~`^+"
_IP = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.\d{1,3}\b")
_IP_FULL = re.compile(r"\[?\d{1,3}(?:\.\d{1,3}){3}\]?")
_RECEIVED_FROM = re.compile(r"from\s+(\S+)(?:\s+\(([^)]*)\))?")
_SUBJECT_PUNCT = re.compile(r"[!$?*%.]{2,}|[!$]")
_LOCAL_DIGITS = re.compile(r"\d{3,}")
_SKEW_BUCKETS = ((-2, "future"), (1, "1h"), (6, "6h"), (24, "1d"), (24 * 7, "1w"),
                 (24 * 60, "2m"))


def _words(text: str) -> list[str]:
    return [w.strip(_EDGE) for w in _WORD.findall(fold(text))]


def _skeleton_words(words: set[str]) -> tuple[set[str], bool]:
    """`words` (folded) as the model sees them (normalize.py): `i`/`l` merged, leetspeak
    undone; and whether any word was written in leetspeak."""
    # All the words joined (no word holds a newline: _WORD splits on whitespace) and the
    # look-alikes replaced at once (str.replace is a memchr loop): one call per word cost
    # a third of tokenize. The same as normalize.SKELETON_TABLE (i -> l, | -> l).
    out = set("\n".join(words).replace("i", "l").replace("|", "l").split("\n"))
    out.discard("")
    leet = False
    # Most words are letters only; only the others can hold leet digits.
    others = [word for word in out if not word.isalpha()]
    for word, plain in zip(others, unleet_many(others)):
        if plain != word:
            out.discard(word)
            out.add(plain)
            leet = True
    return out, leet


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
    lower = fold(body)
    chunks = _WORD.findall(lower)
    distinct = set(chunks)
    # Most words repeat: strip each one once. Set comprehensions, no per-word method calls.
    words, leet = _skeleton_words({word.strip(_EDGE) for word in distinct})
    out = {word for word in words if MIN_WORD <= len(word) <= MAX_WORD}
    for word in [word for word in words if len(word) > MAX_WORD]:
        # long words are mostly unique; their shape still says something
        out.add(f"skip:{word[0]}{len(word) // 10 * 10}")
    if leet:
        out.add("obf:leet")
    out.update(obfuscation(body))
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
    words, leet = _skeleton_words(set(_words(subject)))
    for word in words:
        if word:
            add("subject:" + word)
    if leet:
        add("subject:obf-leet")
    for trick in obfuscation(subject):
        add("subject:" + trick)
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
            if "." not in domain:
                add("message-id:nodot")
    return first_received


def _received_tokens(value: str, add) -> None:
    # The shape of the hop only (see the module docstring: no hosts, no IP ranges).
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
        authority, _, path = (rest.lstrip("/") if sep else lower).partition("/")
        if "%" in path:
            add("url:percent-encoded")
        if "@" in authority and scheme != "mailto":
            add("url:userinfo")
