"""Linear-time replacements for the regular expressions that read message content.

Python's `re` backtracks. A pattern is quadratic on crafted text when a search retries it
at every position of a long run and each try scans the rest of the run before failing:
`<[^>]*>` over 256 KiB of `<` took 40 s, and `[\\w.+-]+@[\\w-]+(?:\\.[\\w-]+)+` over 64 KB of
`a…@b…` 28 s, while holding the interpreter lock (so health checks, admission and SIGTERM
stopped too). Each function here returns exactly what the pattern it replaces returned
(tests/filter_server/test_textscan.py compares them on generated text) in time linear in the text.
The argument is given per function; the shared idea is that every character is looked at
by a bounded number of match attempts:

- an attempt that cannot fail after scanning (a greedy run with nothing required after it)
  consumes what it scanned;
- an attempt that could fail after a long scan is only made where it is the one attempt
  for that stretch of text: at the start of a run (a one-character look-behind rejects the
  other positions of the run at once), or at a character that ends a stretch (`@`);
- a pattern that can only match up to a `>` is not run past the last `>`.

tests/filter_server/test_linear_time.py measures every text-processing stage on adversarial text of
n and 8n bytes.
"""

from __future__ import annotations

import re
from typing import Pattern


def sub_up_to_last(pattern: Pattern[str], repl: str, text: str, closer: str = ">") -> str:
    """`pattern.sub(repl, text)` for a pattern whose every match ends with `closer` and can
    extend over no `closer` before its last character (`<[^>]*>`, `<br\\b[^>]*>`).

    No match can start after the last `closer`, so that tail is left as it is; before it,
    every attempt at a `<` finds its `closer` and consumes the text it scanned. Running the
    pattern over the whole text instead retries it at every `<` of an unclosed tail, each
    retry scanning to the end."""
    last = text.rfind(closer)
    if last < 0:
        return text
    return pattern.sub(repl, text[:last + 1]) + text[last + 1:]


# --- e-mail addresses in body text -------------------------------------------------------
# Replaces `[\w.+-]+@[\w-]+(?:\.[\w-]+)+` (findall). A match's local part is the run of
# [\w.+-] just before an "@" ("@" is not in that class, so a local part ends at the first
# "@" after its start and cannot be shortened), and its domain depends on the "@" alone.
# So the matches are: for each "@" in order whose domain matches, the local-part run before
# it, clipped where the previous match ended, if that leaves at least one character.
_AT_DOMAIN = re.compile(r"@([\w-]+(?:\.[\w-]+)+)")
_LOCAL_RUN_AT_END = re.compile(r"(?<![\w.+-])[\w.+-]+\Z")


def find_emails(text: str, limit: int | None = None) -> list[str]:
    """What `re.findall(r"[\\w.+-]+@[\\w-]+(?:\\.[\\w-]+)+", text)` returns (its first `limit`
    matches), in linear time.

    Linear: `_AT_DOMAIN` is tried at each "@" and scans that "@"'s domain, which holds no
    other "@"; the local part is looked for in the text between the previous "@" (or the
    previous match) and this one, a stretch no other "@" looks at, and `_LOCAL_RUN_AT_END`
    tries only the start of each run in it (the look-behind rejects the rest at once)."""
    out: list[str] = []
    resume = 0          # where the original pattern's search goes on after its last match
    previous_at = -1
    for domain in _AT_DOMAIN.finditer(text):
        at = domain.start()
        start = max(resume, previous_at + 1)
        previous_at = at
        if start >= at:
            continue
        local = _LOCAL_RUN_AT_END.search(text[start:at])
        if local is None:
            continue
        out.append(text[start + local.start():domain.end()])
        resume = domain.end()
        if limit is not None and len(out) >= limit:
            break
    return out


# --- host names in Received headers ----------------------------------------------------
# Replaces `[a-z0-9][a-z0-9.-]*\.[a-z]{2,}` (findall). Within a maximal run of [a-z0-9.-]
# the first start ([a-z0-9]) matches up to the letters after the run's last "." that two
# letters follow, if there is one; any later start of the run needs such a "." after it,
# so it fails when the first one does, and no start follows a match inside its run. One
# attempt per run, at its start, finds exactly those matches; the look-behind rejects every
# other position at once, and the attempt scans its run a bounded number of times.
_HOST_AT_RUN_START = re.compile(r"(?<![a-z0-9.-])[.-]*([a-z0-9][a-z0-9.-]*\.[a-z]{2,})")


def find_hosts(text: str) -> list[str]:
    """What `re.findall(r"[a-z0-9][a-z0-9.-]*\\.[a-z]{2,}", text)` returns, in linear time."""
    return _HOST_AT_RUN_START.findall(text)


# --- the first address in a header value ------------------------------------------------
# Replaces `[\w.+=-]+@[\w.-]+` (search). A start succeeds exactly when the run of [\w.+=-]
# it is in ends with "@" followed by a [\w.-]: every start of a run fares the same, so the
# first match starts at the start of a run, and trying only run starts finds it.
_ADDRESS_AT_RUN_START = re.compile(r"(?<![\w.+=-])[\w.+=-]+@[\w.-]+")


def first_address(text: str) -> str | None:
    """What `re.search(r"[\\w.+=-]+@[\\w.-]+", text)` matches (None: nothing), in linear
    time."""
    found = _ADDRESS_AT_RUN_START.search(text)
    return found.group(0) if found else None


# --- the time zone of a Date header -----------------------------------------------------
# Replaces `([+-]\d{4}|\b[A-Z]{2,4}\b)\s*(?:\(.*\))?\s*$` (search, group 1): the first zone
# token after which only a comment and white space remain. Whether that holds depends only
# on where the token ends, and is decided in constant time from where the text's white
# space, its last line break and its last ")" are; zone tokens cannot overlap, so `finditer`
# meets them in the order the search would.
_ZONE_TOKEN = re.compile(r"[+-]\d{4}|\b[A-Z]{2,4}\b")
_SPACES = re.compile(r"\s*")


def time_zone(date: str) -> str | None:
    """What `re.search(r"([+-]\\d{4}|\\b[A-Z]{2,4}\\b)\\s*(?:\\(.*\\))?\\s*$", date)` gives as
    group 1 (None: no match), in linear time."""
    end = len(date.rstrip())  # `\s*$` takes the trailing white space, line breaks included
    last_break = date.rfind("\n", 0, end)
    for token in _ZONE_TOKEN.finditer(date):
        spaces = _SPACES.match(date, token.end())  # `\s*` always matches
        rest = spaces.end() if spaces else token.end()
        if rest >= end:
            return token.group()
        # a comment: "(" ... ")" with no line break in between (`.` takes no "\n")
        if date[rest] == "(" and date[end - 1] == ")" and end - rest >= 2 and \
                rest > last_break:
            return token.group()
    return None
