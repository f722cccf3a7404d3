"""Turning raw RFC 5322 bytes into the texts rules scan and the model tokenizes.

Uses the stdlib `compat32` parser (several times faster here than `policy.default`, which
builds rich header objects we do not need) and never raises: anything the parser cannot
take marks the message `malformed` and falls back to scanning the raw text.
"""

from __future__ import annotations

import email.header
import email.utils
import html
import itertools
import re
from dataclasses import dataclass, field
from email import utils as email_utils
from email.feedparser import FeedParser
from email.message import Message
from email.policy import compat32
from typing import Any
from urllib.parse import urlsplit

from filter_server.cpu_budget import ScanBudget
from filter_server.textscan import sub_up_to_last

MAX_PARTS = 256          # MIME parts visited per message
MAX_DEPTH = 32           # multipart nesting followed
MAX_URIS = 512           # links collected per message
MAX_LINK_TEXTS = 64      # (href, visible text) pairs of HTML links kept per message
# How far around an href the anchor's "<a", its ">" and its "</a" are looked for: each
# link costs at most this much scanning whatever the markup (linear in the text).
LINK_TAG_WINDOW = 1024
LINK_TEXT_WINDOW = 512
LINK_TEXT_CHARS = 200    # visible text kept per link
MAX_ATTACHED_FILES = 64  # attachments described per message
MAX_HEADER_BYTES = 65536  # decoded header text kept per message
# One header value is cut to this before RFC 2047 decoding: the stdlib decoder is
# quadratic in the value's length (a 700 KB folded Subject took seconds).
MAX_HEADER_VALUE_BYTES = 16384
# A header value with more encoded-word openers ("=?") that nothing closes after them on
# their line than this is kept as raw text: the stdlib decoder retries its pattern at each
# such opener, scanning to the end of the line every time (quadratic: 1 s for 32 KB of
# "=?a?q?x"). Mail has one at most (a Subject cut short).
MAX_UNCLOSED_ENCODED_WORDS = 16
# A From value holding more "(" than this has its comments taken out by a linear scan
# before the stdlib address parser sees it: that parser reads nested comments by
# recursion, two frames a level, and ~500 levels raised RecursionError (issue 20).
MAX_FROM_PARENS = 64
# The same parser reads a group ("name: a@b, c@d;") by recursion too, a level per ":"
# (a From of 1,000 ":" raised RecursionError), and joins a group's members by list
# concatenation (quadratic in their number). Only the first address is wanted, so the
# value is cut to this many characters for it, and above MAX_FROM_COLONS ":" they are read
# as spaces.
MAX_FROM_ADDRESS_CHARS = 4096
MAX_FROM_COLONS = 64
# The parser is fed this many characters at a time (what the stdlib parser does itself),
# and the CPU budget is checked between feeds.
FEED_CHARS = 8192
# A message declaring more multipart boundaries than this is not handed to the stdlib
# parser, whose cost grows with the square of the nesting depth (a 56 KB message nested
# 1000 deep took over a second); it is scanned as raw text and marked malformed.
MAX_BOUNDARIES = 128
# Only the start of a message is parsed: the stdlib parser holds about eight times what it
# is given (159 MiB for a 20 MiB message) and takes most of a second for 20 MiB, while the
# text rules and the model read at most limits.maxScanBytes of decoded text and the first
# MIME parts. The rest — in practice attachments — is never read, so one message costs a
# bounded amount of memory and time whatever its size (SpamAssassin likewise scans only
# the start of large parts). The policy schema caps maxScanBytes at this size.
MAX_PARSE_BYTES = 4 * 1024 * 1024

_FOLD = re.compile(r"\r?\n[ \t]+")
_HIDDEN_OPEN = re.compile(r"<!--|<(script|style)\b", re.I)
_HIDDEN_CLOSE = {"script": re.compile(r"</script\s*>", re.I),
                 "style": re.compile(r"</style\s*>", re.I)}
_BOUNDARY = re.compile(rb"boundary\s*=", re.I)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
# Link attributes: \b(?:href|src|action)\s*=\s*["']?([^"'\s>]+) matched case-insensitively,
# spelt out so the regex engine can skip every position that cannot start a match (3x faster
# than re.I here). The character classes are exactly what re.I matches: it also takes the
# long s (U+017F) for "s" and the dotted/dotless I (U+0130, U+0131) for "i". The look-behind
# after the first letter is the \b before it.
_HTML_HREF = re.compile(
    r"""[hHsSſaA](?<!\w[hHsSſaA])"""
    r"""(?:(?<=[hH])[rR][eE][fF]|(?<=[sSſ])[rR][cC]|(?<=[aA])[cC][tT][iIİı][oO][nN])"""
    r"""\s*=\s*["']?([^"'\s>]+)""")
# Tags and line-breaking tags. Both match up to the first ">" after a "<", so they are
# only run up to the last ">" (textscan.sub_up_to_last: linear; over the whole text each
# unclosed "<" is retried to the end, and 256 KiB of "<" took 40 s).
_HTML_TAG = re.compile(r"<[^>]*>")
_HTML_BREAK = re.compile(r"<(?:br|p|div|tr|li|h\d)\b[^>]*>", re.I)
# Links in text: (?:https?://|www\.)[^\s<>"'()\[\]{}]+ case-insensitively, spelt out the same
# way (re.I also takes the long s for "s").
_ANCHOR_CLOSE = re.compile(r"</[aA]\b")
_TEXT_URI = re.compile(
    r"""[hHwW](?:(?<=[hH])[tT][tT][pP][sSſ]?://|(?<=[wW])[wW][wW]\.)[^\s<>"'()\[\]{}]+""")


@dataclass
class ParsedMessage:
    headers: list[tuple[str, str]]            # (name, decoded unfolded value), in order
    header_map: dict[str, list[str]]          # lower-case name -> values
    body_text: str                            # decoded text parts, HTML stripped, collapsed
    html_present: bool
    uris: list[str]
    uri_hosts: list[str]
    from_address: str
    malformed: bool
    part_count: int = 0
    attachments: list[str] = field(default_factory=list)  # content types of non-text parts
    # Every attached file, text ones included, as "content/type file-name" (the name
    # lower-cased, "" when there is none): what `attachment` rules scan.
    attached_files: list[str] = field(default_factory=list)
    # Set when the CPU budget ran out while parsing: what was read of the message (the
    # rest was not parsed), for the SCAN_BUDGET_EXCEEDED hit.
    budget_note: str | None = None
    # HTML links as (href, visible text of the anchor, tags stripped): what the built-in
    # link traits compare (filter_server/engine/traits.py). At most MAX_LINK_TEXTS.
    link_texts: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str:
        values = self.header_map.get(name.lower())
        return values[0] if values else ""


def decode_header_value(value: str) -> str:
    """Unfold and decode RFC 2047 encoded-words; never raises. A value with more than
    MAX_UNCLOSED_ENCODED_WORDS openers that are never closed is kept as it is."""
    if "\n" in value:  # only folded values need the regex (most are one line)
        value = _FOLD.sub(" ", value)
    if "=?" not in value or unclosed_openers(value) > MAX_UNCLOSED_ENCODED_WORDS:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # malformed encoded-words, unknown charsets: keep the raw text
        return value


def unclosed_openers(value: str) -> int:
    """How many "=?" of `value` have no "?=" after them on their line (lines as the stdlib
    decoder splits them): the openers at which its pattern scans to the end of the line
    and fails. Linear."""
    count = 0
    for line in value.splitlines():
        close = line.rfind("?=")
        count += line.count("=?", close + 2 if close >= 0 else 0)
    return count


def _decode_payload(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except (LookupError, ValueError):
        return payload.decode("latin-1")


def drop_hidden(markup: str) -> str:
    """Remove comments, scripts and styles in one pass (linear time).

    An opener that is never closed is kept as text and scanning goes on after it. (Hiding
    the rest of the document, as a browser would, cost accuracy: real ham in the corpus has
    stray `<!--`, and dropping everything after it turned one test-split ham into a false
    positive.) Each kind of closer is searched for to the end at most once — a lazy
    `<!--.*?-->|<script>.*?</script>` regex rescans to the end for every unclosed opener,
    which is quadratic: a 270 KB message of unclosed `<script>` tags took 30 s."""
    out: list[str] = []
    never_closed: set[str] = set()   # kinds whose closer does not occur after some opener
    pos = 0
    while True:
        opener = _HIDDEN_OPEN.search(markup, pos)
        if opener is None:
            out.append(markup[pos:])
            break
        kind = (opener.group(1) or "--").lower()
        end = -1
        if kind not in never_closed:
            if kind == "--":
                found = markup.find("-->", opener.end())
                end = -1 if found < 0 else found + 3
            else:
                closer = _HIDDEN_CLOSE[kind].search(markup, opener.end())
                end = -1 if closer is None else closer.end()
        if end < 0:
            # No closer after this opener means none after any later one either.
            never_closed.add(kind)
            out.append(markup[pos:opener.end()])
            pos = opener.end()
            continue
        out.append(markup[pos:opener.start()])
        out.append(" ")
        pos = end
    return "".join(out)


def html_to_text(markup: str, uris: list[str],
                 link_texts: list[tuple[str, str]] | None = None) -> str:
    """Strip HTML to its visible text; collect link targets into `uris` and, when given,
    the (href, visible text) of `<a href>` links into `link_texts`."""
    markup = drop_hidden(markup)
    if len(uris) < MAX_URIS:
        found = list(itertools.islice(_HTML_HREF.finditer(markup), MAX_URIS - len(uris)))
        uris.extend(m.group(1) for m in found)
        if link_texts is not None:
            for match in found:
                if len(link_texts) >= MAX_LINK_TEXTS:
                    break
                text = anchor_text(markup, match.start(), match.end())
                if text is not None:
                    link_texts.append((match.group(1), text))
    markup = sub_up_to_last(_HTML_BREAK, "\n", markup)
    return html.unescape(sub_up_to_last(_HTML_TAG, " ", markup))


def anchor_text(markup: str, start: int, end: int) -> str | None:
    """The visible text of the `<a ...>` whose href attribute spans `start:end`, or None
    when the attribute is not in an `<a>` tag or the anchor is not closed nearby. Every
    search is bounded (LINK_TAG_WINDOW, LINK_TEXT_WINDOW), so a link costs at most a
    couple of kilobytes of scanning whatever the markup around it."""
    opener = markup.rfind("<", max(0, start - LINK_TAG_WINDOW), start)
    if opener < 0 or markup[opener + 1:opener + 2] not in ("a", "A") or \
            not markup[opener + 2:opener + 3].isspace():
        return None
    if markup.find(">", opener, start) >= 0:     # the href is outside that tag
        return None
    tag_end = markup.find(">", end, end + LINK_TAG_WINDOW)
    if tag_end < 0:
        return None
    closer = _ANCHOR_CLOSE.search(markup, tag_end + 1, tag_end + 1 + LINK_TEXT_WINDOW)
    if closer is None:
        return None
    inner = markup[tag_end + 1:closer.start()]
    if "<" in inner:
        inner = sub_up_to_last(_HTML_TAG, " ", inner)
    return collapse_whitespace(html.unescape(inner))[:LINK_TEXT_CHARS]


def collapse_whitespace(text: str) -> str:
    """Runs of whitespace become one space, none at either end. (str.split() splits on
    exactly the characters regex \\s matches, and is several times faster.)"""
    return " ".join(text.split())


def uri_host(uri: str) -> str | None:
    if uri.lower().startswith("www."):
        uri = "http://" + uri
    try:
        host = urlsplit(uri.strip()).hostname
    except ValueError:
        return None
    if not host:
        return None
    return host.rstrip(".").lower()


_NO_BUDGET = ScanBudget(None)


def _walk(root: Message) -> list[Message]:
    """Leaf parts, depth-first, bounded in depth and count (iterative: no recursion)."""
    leaves: list[Message] = []
    stack: list[tuple[Message, int]] = [(root, 0)]
    visited = 0
    while stack and visited < MAX_PARTS:
        part, depth = stack.pop()
        visited += 1
        payload = part.get_payload()
        if isinstance(payload, list):
            if depth < MAX_DEPTH:
                stack.extend((child, depth + 1) for child in reversed(payload)
                             if isinstance(child, Message))
        else:
            leaves.append(part)
    return leaves


def parse_message(raw: bytes, *, max_text_bytes: int = 262144,
                  budget: ScanBudget | None = None) -> ParsedMessage:
    """Parse the first MAX_PARSE_BYTES of `raw`; text beyond `max_text_bytes` is dropped.
    With a `budget`, parsing stops where its CPU time runs out (`budget_note` says how far
    it got). Never raises."""
    raw = _parsed_part(raw)
    try:
        return _parse(raw, max_text_bytes, budget)
    except Exception:  # malformed input the stdlib parser cannot take
        return _fallback(raw, max_text_bytes)


def _parsed_part(raw: bytes) -> bytes:
    """`raw` up to MAX_PARSE_BYTES, cut after a line end so that no line (and no base64
    quantum of a text part) is cut in half."""
    if len(raw) <= MAX_PARSE_BYTES:
        return raw
    end = raw.rfind(b"\n", 0, MAX_PARSE_BYTES)
    return raw[:end + 1] if end > 0 else raw[:MAX_PARSE_BYTES]


class _Part(Message):
    """A compat32 message whose header parameters (boundary=, charset=, ...) are split in
    linear time. The stdlib splitter copies the rest of the value at every ";" and recounts
    the quotes before it from the start of the value, so a Content-Type of 32 KB of ";"
    after an unbalanced quote took 0.8 s, and 256 KB would take a minute (a corpus spam
    has 7,138 ";" in one). The result is the stdlib's, parameter for parameter."""

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        missing = object()
        value = self.get(header, missing)
        if value is missing:
            return failobj
        params = []
        for param in split_params(str(value)):
            name, sep, val = param.partition("=")
            params.append((name.strip(), val.strip()) if sep else (param.strip(), ""))
        return email_utils.decode_params(params)


def split_params(value: str) -> list[str]:
    """What the stdlib's `email.message._parseparam(value)` returns, in linear time: `value`
    split at each ";" outside double quotes (a quote after a backslash does not count), each
    piece stripped, and "name = v" pieces written "name=v" with the name lower-cased.

    The stdlib decides whether a ";" is inside quotes by counting the quotes from the start
    of the rest of the value; those counts are sums over the stretches between ";"s (a
    backslash-quote pair cannot straddle a ";"), so they are kept as running totals here."""
    text = ";" + value
    out: list[str] = []
    start = 0
    size = len(text)
    while start < size and text[start] == ";":
        start += 1
        end = text.find(";", start)
        quotes = 0  # quotes minus backslash-quotes in text[start:end], kept as it grows
        counted = start
        while end > start:
            quotes += text.count('"', counted, end) - text.count('\\"', counted, end)
            counted = end
            if quotes % 2 == 0:
                break
            end = text.find(";", end + 1)
        if end < 0:
            end = size
        piece = text[start:end]
        if "=" in piece:
            i = piece.index("=")
            piece = piece[:i].strip().lower() + "=" + piece[i + 1:].strip()
        out.append(piece.strip())
        start = end
    return out


def _parse(raw: bytes, max_text_bytes: int, budget: ScanBudget | None) -> ParsedMessage:
    # Every match of _BOUNDARY (ASCII case-insensitive, like bytes.lower) holds the word
    # "boundary" once, so counting the word first spares most messages the regex pass.
    if raw.lower().count(b"boundary") > MAX_BOUNDARIES and \
            len(_BOUNDARY.findall(raw, 0, len(raw))[:MAX_BOUNDARIES + 1]) > MAX_BOUNDARIES:
        return _fallback(raw, max_text_bytes)
    budget = budget or _NO_BUDGET
    # What email.message_from_bytes does, a slice at a time, so the budget is checked
    # between slices (the stdlib parser reads 8192 characters at a time itself).
    text = raw.decode("ASCII", errors="surrogateescape")
    parser = FeedParser(_Part, policy=compat32)
    read = 0
    while read < len(text):
        if budget.spent():
            break
        parser.feed(text[read:read + FEED_CHARS])
        read += FEED_CHARS
    msg = parser.close()
    stopped: list[str] = []  # what the budget cut short, for the verdict
    if read < len(text):
        stopped.append(f"parsed {read:,} of {len(raw):,} bytes")
        budget.renew()  # to decode what was read
    headers: list[tuple[str, str]] = []
    header_map: dict[str, list[str]] = {}
    kept = 0
    fetch = msg.policy.header_fetch_parse
    items = list(msg.raw_items())
    for index, (name, value) in enumerate(items):
        if kept > MAX_HEADER_BYTES:
            break
        if budget.spent():
            stopped.append(f"decoded {index} of {len(items)} headers")
            break
        # What msg.items() would give: compat32 turns a value holding undecodable bytes
        # (surrogates, never in ASCII) into a Header object; ASCII values stay as they are.
        if not (isinstance(value, str) and value.isascii()):
            value = fetch(name, value)
            if not isinstance(value, str):
                value = str(value)
        decoded = decode_header_value(value[:MAX_HEADER_VALUE_BYTES])
        kept += len(decoded)
        headers.append((name, decoded))
        header_map.setdefault(name.lower(), []).append(decoded)

    texts: list[str] = []
    size = 0
    uris: list[str] = []
    link_texts: list[tuple[str, str]] = []
    html_present = False
    attachments: list[str] = []
    attached_files: list[str] = []
    leaves = _walk(msg)
    for index, part in enumerate(leaves):
        if budget.spent():
            stopped.append(f"decoded {index} of {len(leaves)} parts")
            break
        ctype = part.get_content_type()
        disposition = str(part.get("content-disposition", "")).lower()
        is_text = part.get_content_maintype() == "text"
        if not is_text or disposition.startswith("attachment"):
            if len(attached_files) < MAX_ATTACHED_FILES:
                attached_files.append(f"{ctype} {_file_name(part)}")
        if not is_text or \
                (disposition.startswith("attachment") and ctype not in ("text/plain", "text/html")):
            attachments.append(ctype)
            continue
        if size >= max_text_bytes:
            continue
        text = _decode_payload(part)
        if ctype == "text/html":
            html_present = True
            text = html_to_text(text, uris, link_texts)
        texts.append(text[: max_text_bytes - size])
        size += len(texts[-1])
    body = collapse_whitespace(" ".join(texts))
    malformed = any(_is_serious(d) for d in msg.defects) or \
        any(any(_is_serious(d) for d in p.defects) for p in leaves)
    parsed = _finish(headers, header_map, body, html_present, uris, malformed,
                     len(leaves), attachments)
    parsed.attached_files = attached_files
    parsed.link_texts = link_texts
    if stopped:
        parsed.budget_note = ", ".join(stopped)
    return parsed


def _file_name(part: Message) -> str:
    """The attachment's file name (Content-Disposition filename, else Content-Type name),
    decoded, lower-cased, at most 255 characters; "" when it has none or it is unreadable."""
    try:
        name = part.get_filename() or part.get_param("name") or ""
        if isinstance(name, tuple):  # RFC 2231 value the stdlib could not decode
            name = email.utils.collapse_rfc2231_value(name)
        name = decode_header_value(str(name)[:1024])
    except Exception:  # malformed parameters: the part still counts, nameless
        return ""
    return " ".join(name.split())[:255].lower()


def _is_serious(defect: Exception) -> bool:
    # Missing trailing boundaries and similar sloppiness are everyday mail; these are not.
    return type(defect).__name__ in {
        "StartBoundaryNotFoundDefect", "NoBoundaryInMultipartDefect",
        "InvalidBase64CharactersDefect", "InvalidBase64PaddingDefect",
        "InvalidBase64LengthDefect", "MultipartInvariantViolationDefect",
        "MissingHeaderBodySeparatorDefect",
    }


def _fallback(raw: bytes, max_text_bytes: int) -> ParsedMessage:
    # The first empty line ends the headers, with either line ending (mail is CRLF).
    parts = _BLANK_LINE.split(raw, maxsplit=1)
    head, body = parts[0], parts[1] if len(parts) > 1 else b""
    headers: list[tuple[str, str]] = []
    header_map: dict[str, list[str]] = {}
    kept = 0
    for line in _FOLD.sub(" ", head.decode("latin-1")).splitlines():
        if kept > MAX_HEADER_BYTES:
            break
        name, sep, value = line.partition(":")
        if sep and name and " " not in name:
            # bounded like the parser's headers: the tokenizer reads these values
            value = value[:MAX_HEADER_VALUE_BYTES].strip()
            kept += len(value)
            headers.append((name, value))
            header_map.setdefault(name.lower(), []).append(value)
    text = body[:max_text_bytes].decode("utf-8", errors="replace")
    return _finish(headers, header_map, collapse_whitespace(text), False, [], True, 0, [])


def _finish(headers: list[tuple[str, str]], header_map: dict[str, list[str]], body: str,
            html_present: bool, uris: list[str], malformed: bool, part_count: int,
            attachments: list[str]) -> ParsedMessage:
    if len(uris) < MAX_URIS:
        uris.extend(_TEXT_URI.findall(body)[: MAX_URIS - len(uris)])
    hosts: list[str] = []
    seen: set[str] = set()
    for uri in dict.fromkeys(uris):  # each distinct link once, in order of appearance
        host = uri_host(uri)
        if host and host not in seen:
            seen.add(host)
            hosts.append(host)
    from_values = header_map.get("from")
    from_address = address_of(from_values[0]) if from_values else ""
    return ParsedMessage(headers=headers, header_map=header_map, body_text=body,
                         html_present=html_present, uris=uris, uri_hosts=hosts,
                         from_address=from_address, malformed=malformed,
                         part_count=part_count, attachments=attachments)


def address_of(value: str) -> str:
    """The (first) address in a From value, lower-cased, as `email.utils.parseaddr` finds
    it in the first MAX_FROM_ADDRESS_CHARS; "" when there is none. The stdlib parser
    recurses per comment level and per group, so a value with more than MAX_FROM_PARENS
    "(" has its comments (which never hold the address) emptied first, and one with more
    than MAX_FROM_COLONS ":" has them read as spaces: it meets no deep nesting."""
    value = value[:MAX_FROM_ADDRESS_CHARS]
    if value.count("(") > MAX_FROM_PARENS:
        value = empty_comments(value)
    if value.count(":") > MAX_FROM_COLONS:
        value = value.replace(":", " ")
    return email.utils.parseaddr(value)[1].lower()


def empty_comments(value: str) -> str:
    """`value` with every RFC 5322 comment, nested ones included, replaced by "()" — read
    the way the stdlib address parser reads them: a backslash quotes the next character,
    ")" or CR closes one level, and an unclosed comment runs to the end; parentheses in a
    quoted string or in a domain literal ("[" after "@") are text. One pass, no recursion.

    For the address this is exactly what the stdlib parser finds in values without "["
    (tests/filter_server/test_textscan.py); in a domain it reads a "[" as a literal only right
    after the "@", a simplification that matters only to values this one is used for
    (more than MAX_FROM_PARENS "(", where the stdlib parser would recurse to a crash)."""
    out: list[str] = []
    depth = 0
    closer = ""      # what ends the quoted string or domain literal we are in ("" = none)
    escaped = False
    kept_from = 0
    previous = ""    # the last character outside comments that is not white space
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and (depth or closer):
            escaped = True
        elif depth:
            if char == "(":
                depth += 1
            elif char in ")\r":
                depth -= 1
                if not depth:
                    out.append("()")
                    kept_from = i + 1
        elif closer:
            if char in closer:
                closer = ""
        elif char == '"':
            closer = '"\r'
        elif char == "[" and previous == "@":
            closer = "]\r"
        elif char == "(":
            out.append(value[kept_from:i])
            depth = 1
        if not depth and not char.isspace():
            previous = char
    if depth:
        out.append("()")
    else:
        out.append(value[kept_from:])
    return "".join(out)
