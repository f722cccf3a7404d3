"""Undoing look-alike spellings before tokenizing: "Mlcrosoft", "DownIoad N0W", "Pаypal"
with a Cyrillic а, "F\u200bREE" with an invisible space all become the word a reader sees.

Three steps, each a `str.translate` or `str.replace` (C loops, linear in the text):

1. `fold` (only for text that is not pure ASCII): Unicode compatibility forms (NFKC: full-
   width letters, ligatures, mathematical alphanumerics), invisible characters removed
   (zero-width spaces and joiners, soft hyphens, bidi marks), letters of other scripts that
   look like Latin ones mapped to them (Cyrillic а, Greek ο ...), accents dropped.
2. `skeleton`, applied to every word: the letters readers confuse are merged — `i` and `l`
   (and `|`) become `l` — so "Mlcrosoft", "MicrosoIt" and "Microsoft" are one token. A
   word is still a word; the model never sees which spelling was used, only the fact (3).
3. Leetspeak in words that mix letters with digits or symbols: 0→o, 1→l, 3→e, 4→a, 5→s,
   7→t, @→a, $→s ("v1agra", "N0W", "fr3e"). Numbers, prices, dates and addresses are left
   alone: only a word with a letter on each side of a substituted character changes.

`obfuscation` reports which tricks a text used (as tokens: `obf:invisible`,
`obf:mixed-script`, `obf:leet`): honest mail rarely needs them.
"""

from __future__ import annotations

import unicodedata

# Invisible format characters used to split words for filters but not for readers.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e"
                               "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d"
                               "\u202e\u2060\u2061\u2062\u2063\u2064\u206a\u206b\u206c"
                               "\u206d\u206e\u206f\ufeff"))
# Letters of Cyrillic, Greek and other scripts that render like Latin letters (after NFKC
# and lower-casing), from Unicode's confusables list, the ones seen in spam.
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i",
    "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ɡ": "g", "ո": "n",
    "ս": "u", "ց": "g", "օ": "o", "զ": "q",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j",
    # Latin look-alikes outside ASCII
    "ı": "i", "ł": "l", "ƚ": "l", "ɩ": "i", "ɪ": "i", "ʟ": "l", "ᴏ": "o", "ᴄ": "c",
    "ꞵ": "b", "ß": "ss", "ø": "o", "đ": "d", "ħ": "h",
}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_CONFUSABLE_MAP: dict[str, str | None] = {**_CONFUSABLES, **{chr(k): None for k in _INVISIBLE}}
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLE_MAP)


def _accent_table() -> dict[int, str]:
    """Latin letters with diacritics (U+00C0-U+024F) -> their base letter."""
    table = {}
    for code in range(0xC0, 0x250):
        decomposed = unicodedata.normalize("NFD", chr(code))
        base = decomposed[0]
        if len(decomposed) > 1 and base.isascii() and base.isalpha():
            table[code] = base
    return table


_ACCENTS = _accent_table()
_FOLD_TABLE = {**_ACCENTS, **_CONFUSABLE_TABLE}
# i and l (and the pipe) look alike in most fonts: one letter in the skeleton.
SKELETON_TABLE = str.maketrans({"i": "l", "|": "l"})
_LEET = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t",
                       "@": "a", "$": "s"})
_ASCII_LETTERS = frozenset(_LETTERS)


def fold(text: str) -> str:
    """Lower-cased text with compatibility forms, invisible characters, look-alike letters of
    other scripts and Latin accents undone. ASCII text only needs lower-casing."""
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKC", text).lower().translate(_FOLD_TABLE)


def skeleton(word: str) -> str:
    """A folded word as the model sees it: `i`/`l`/`|` merged, then leetspeak undone (in
    that order, so "d0wn|oad" becomes "download": the pipe is a letter once merged)."""
    word = word.translate(SKELETON_TABLE)
    return word if word.isalpha() else unleet(word)


def unleet(word: str) -> str:
    """Leet digits and symbols between letters become the letters they stand for
    ("v1agra" -> "vlagra", "n0w" -> "now"); a word without a letter, or whose substitutes
    are not between or next to letters (prices, versions, "mp3"), is returned unchanged."""
    mapped = word.translate(_LEET)
    if mapped == word or not mapped.isalpha():
        return word
    # "2024" and "$5" map to letters too; require letters in the original word, and at
    # least as many letters as substitutes so model numbers ("a4", "b2b") stay.
    letters = sum(ch in _ASCII_LETTERS for ch in word)
    if letters < 2 or letters < len(word) - letters:
        return word
    return mapped


def unleet_many(words: list[str]) -> list[str]:
    """`unleet` of each word (same result, position for position), with one translate over
    all of them joined instead of one per word (no word may hold a newline)."""
    mapped = "\n".join(words).translate(_LEET).split("\n")
    return [_unleet_checked(word, plain) if plain != word else word
            for word, plain in zip(words, mapped)]


def _unleet_checked(word: str, mapped: str) -> str:
    if not mapped.isalpha():
        return word
    letters = sum(ch in _ASCII_LETTERS for ch in word)
    if letters < 2 or letters < len(word) - letters:
        return word
    return mapped


def obfuscation(original: str) -> list[str]:
    """Which look-alike tricks `original` (raw, unfolded text) uses."""
    if original.isascii():
        return []
    found = []
    if any(ch in original for ch in _INVISIBLE_CHARS):
        found.append("obf:invisible")
    # A Latin word with a letter of another script in it: after folding, it became ASCII.
    if _CONFUSABLE_CHARS.intersection(original.lower()):
        for word in original.lower().split():
            if _CONFUSABLE_CHARS.intersection(word) and _ASCII_LETTERS.intersection(word):
                found.append("obf:mixed-script")
                break
    return found


_INVISIBLE_CHARS = "".join(map(chr, _INVISIBLE))
_CONFUSABLE_CHARS = frozenset(k for k in _CONFUSABLES if len(k) == 1 and not k.isascii())
