"""Tokens the statistical model learns from: words of the body and subject, selected header
fields, header names, link hosts and a few structural facts about the message.

Tokens are prefixed by where they came from (`subject:`, `from:`, `url:` ...) so the same
word can carry different weight in different places. A message contributes each token once.
"""

from __future__ import annotations

import re

from filter_server.engine.message import ParsedMessage

MAX_BODY_CHARS = 65536
MAX_TOKENS_PER_HEADER = 40

# Headers whose words are informative. Received/Date/Message-ID values are mostly unique
# noise; for Received we keep only the hosts, for Message-ID only the domain.
_WORD_HEADERS = (
    "from", "to", "cc", "reply-to", "return-path", "sender", "x-mailer", "user-agent",
    "content-type", "content-transfer-encoding", "mime-version", "precedence", "list-id",
    "list-unsubscribe", "x-mailing-list", "x-priority", "x-msmail-priority", "organization",
    "errors-to", "x-beenthere", "x-mailman-version", "importance", "x-originating-ip",
)
_WORD = re.compile(r"[^\s<>\"'(){}\[\],;:=]+")
_EDGE = ".!?*-_/\\|#~`^+"
_HOST = re.compile(r"[a-z0-9][a-z0-9.-]*\.[a-z]{2,}")


def _words(text: str) -> list[str]:
    return [w.strip(_EDGE) for w in _WORD.findall(text.lower())]


def tokenize(msg: ParsedMessage) -> set[str]:
    out: set[str] = set()
    add = out.add
    for word in _words(msg.body_text[:MAX_BODY_CHARS]):
        n = len(word)
        if 3 <= n <= 20:
            add(word)
        elif n > 20:
            # long words are mostly unique; their shape still says something
            add(f"skip:{word[0]}{n // 10 * 10}")
    for word in _words(msg.header("subject")):
        if word:
            add("subject:" + word)
    for name, value in msg.headers:
        lname = name.lower()
        add("header:" + lname)
        if lname in _WORD_HEADERS:
            for word in _words(value)[:MAX_TOKENS_PER_HEADER]:
                if 2 <= len(word) <= 40:
                    add(f"{lname}:{word}")
        elif lname == "received":
            for host in _HOST.findall(value.lower())[:8]:
                add("received:" + host)
        elif lname == "message-id":
            add("message-id:" + value.rpartition("@")[2].strip("> ").lower()[:60])
    for host in msg.uri_hosts[:64]:
        add("url:" + host)
        labels = host.split(".")
        if len(labels) > 2:
            add("url:" + ".".join(labels[-2:]))
    add(f"html:{msg.html_present}")
    add(f"parts:{min(msg.part_count, 10)}")
    add(f"links:{min(len(msg.uris), 20) // 5 * 5}")
    for ctype in msg.attachments[:8]:
        add("attachment:" + ctype)
    if msg.malformed:
        add("mime:malformed")
    return out
