"""Built-in facts about a message that no pattern can express: they compare two parts of
the message with each other (the text of a link with where it goes, the unsubscribe
address with the sender) or a domain with a list of brands after undoing look-alike
spellings.

Each fires as a hit scoring 0, like MIME_MALFORMED: a policy gives it a score through a
meta rule (`expression: LINK_TEXT_OTHER_DOMAIN`), and `mailwarden train --policy` fits
that score like any other (docs/model.md). Measured on the SpamAssassin corpus (2002 mail,
`benchmarks/cross_source.py`, docs/model.md): a List-Unsubscribe address in the sender's own
domain is on 15% of the hard ham (commercial newsletters) and 0.1-0.2% of the spam; a link
whose text names another domain than it goes to is on 5.6% of the hard ham (click-tracking
redirectors) and 0.9% of the spam — a phishing sign only together with a brand.
"""

from __future__ import annotations

import re
from functools import lru_cache

from filter_server.bayes.normalize import fold
from filter_server.message import ParsedMessage, uri_host
from filter_server.policy.trait_rules import TRAITS

__all__ = ["TRAITS", "traits", "lookalike_brand", "registered_domain"]

# Brands phishing imitates most (the names of URI_BRAND_PREFIX in examples/spampolicy.yaml).
BRANDS = ("paypal", "apple", "icloud", "microsoft", "office365", "outlook", "amazon",
          "netflix", "google", "facebook", "instagram", "linkedin", "dropbox", "docusign",
          "adobe", "wellsfargo", "chase", "bankofamerica", "coinbase", "binance", "dhl",
          "fedex", "usps")
# Shorter brands are only matched exactly after folding: one edit away from a five-letter
# name is too often another word (chase/chaser, apple/apples).
MIN_EDIT_BRAND = 6

# Second-level labels under which a country's registrations sit (co.uk, com.au ...).
_SECOND_LEVEL = frozenset(("co", "com", "net", "org", "gov", "ac", "edu", "ne", "or", "go"))
# Look-alike spellings of letters in domain names (after Unicode folding).
_LOOKALIKE = str.maketrans({"0": "o", "1": "l", "i": "l", "3": "e", "4": "a", "5": "s",
                            "7": "t", "-": None, "_": None})
# Visible link text that reads as an address: a URL, or a host name with a common TLD.
_TEXT_DOMAIN = re.compile(
    r"(?i)(?:https?://|www\.)([a-z0-9.-]+\.[a-z]{2,})"
    r"|^([a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|net|org|info|biz|us|uk|de|ca|io|co|gov|edu))\b")
_UNSUB_DOMAIN = re.compile(r"(?i)(?:https?://|mailto:[^@>\s]*@)([a-z0-9.-]+\.[a-z]{2,})")


# Hosts and sender domains repeat from message to message (the same shops, the same
# redirectors): their answers are kept, a bounded number per process, of names no longer
# than a DNS name can be (longer ones are no host anyone can link to, and are skipped), so
# the caches hold at most a few MB whatever the mail.
CACHED_DOMAINS = 8192
MAX_HOST_CHARS = 253


@lru_cache(maxsize=CACHED_DOMAINS)
def registered_domain(host: str) -> str:
    """The domain a host was registered under (approximately: the last two labels, three
    under a country's co/com/net/org ...)."""
    labels = host.lower().strip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _name_part(domain: str) -> str:
    """The label a registrant chose ("paypal" of paypal.co.uk)."""
    return domain.split(".", 1)[0]


def _skeleton(label: str) -> str:
    if label.startswith("xn--"):
        try:
            label = label.encode("ascii").decode("idna")
        except UnicodeError:
            return label
    if not label.isascii():
        label = fold(label)
    return label.lower().translate(_LOOKALIKE).replace("rn", "m").replace("vv", "w")


_BRAND_SKELETONS = {_skeleton(b): b for b in BRANDS}


def _one_edit(a: str, b: str) -> bool:
    """a and b differ by exactly one insertion, deletion, substitution or swap."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and
                                  a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1:]


@lru_cache(maxsize=CACHED_DOMAINS)
def lookalike_brand(domain: str) -> str | None:
    """The brand a registered domain imitates, or None (also None for the brand's own
    domains: paypal.com, paypal.co.uk)."""
    name = _name_part(domain)
    if name in _BRAND_SKELETONS.values():
        return None                                  # the brand's own name
    skeleton = _skeleton(name)
    if skeleton in _BRAND_SKELETONS:
        return _BRAND_SKELETONS[skeleton]            # paypa1, rnicrosoft, pаypal
    parts = name.split("-")
    if len(parts) > 1:
        for part in parts:
            if _skeleton(part) in _BRAND_SKELETONS:
                return _BRAND_SKELETONS[_skeleton(part)]   # paypal-secure, login-amazon
    for brand_skeleton, brand in _BRAND_SKELETONS.items():
        if len(brand) >= MIN_EDIT_BRAND and _one_edit(skeleton, brand_skeleton):
            return brand                             # paypall, arnazon, gooogle
    return None


def _http_host(href: str) -> str | None:
    if not href.lower().startswith(("http://", "https://")):
        return None
    return uri_host(href)


def link_text_traits(parsed: ParsedMessage) -> set[str]:
    out: set[str] = set()
    for href, text in parsed.link_texts:
        if not text:
            continue
        found = _TEXT_DOMAIN.search(text)
        if found is None:
            continue
        host = _http_host(href)
        if host is None or len(host) > MAX_HOST_CHARS:
            continue
        shown = registered_domain((found.group(1) or found.group(2))[:MAX_HOST_CHARS])
        if shown == registered_domain(host):
            continue
        out.add("LINK_TEXT_OTHER_DOMAIN")
        if _name_part(shown) in _BRAND_SKELETONS.values():
            out.add("LINK_TEXT_BRAND_ELSEWHERE")
    return out


def _sender_domain(parsed: ParsedMessage) -> str:
    domain = parsed.from_address.rpartition("@")[2]
    if "@" not in parsed.from_address or len(domain) > MAX_HOST_CHARS:
        return ""
    return registered_domain(domain)


def traits(parsed: ParsedMessage) -> set[str]:
    """The names of the TRAITS that hold for `parsed`."""
    out = link_text_traits(parsed) if parsed.link_texts else set()
    sender = _sender_domain(parsed)
    domains = {registered_domain(h) for h in parsed.uri_hosts[:64]
               if len(h) <= MAX_HOST_CHARS}
    if sender and sender in domains:
        out.add("SENDER_DOMAIN_IN_LINKS")
    if sender:
        domains.add(sender)
    if any(lookalike_brand(d) for d in domains if "." in d):
        out.add("LOOKALIKE_BRAND_DOMAIN")
    unsubscribe = parsed.header_map.get("list-unsubscribe")
    if sender and unsubscribe:
        if any(registered_domain(d) == sender
               for value in unsubscribe for d in _UNSUB_DOMAIN.findall(value[:2048])
               if len(d) <= MAX_HOST_CHARS):
            out.add("LIST_UNSUB_FROM_DOMAIN")
    return out
