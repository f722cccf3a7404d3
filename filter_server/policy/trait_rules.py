"""The built-in traits the engine fires (filter_server/engine/traits.py), with their
descriptions: here so the policy validator (and the operator through it) knows their names
without importing the engine. Every trait scores 0 itself; a policy scores it with a meta
rule (`expression: LINK_TEXT_OTHER_DOMAIN`), whose score `mailwarden train --policy` fits."""

from __future__ import annotations

TRAITS: dict[str, str] = {
    "LINK_TEXT_OTHER_DOMAIN": "a link's visible text names another domain than the link "
                              "goes to",
    "LINK_TEXT_BRAND_ELSEWHERE": "a link's visible text names a brand's domain, the link "
                                 "goes to another domain",
    "LOOKALIKE_BRAND_DOMAIN": "a link or the sender is in a domain spelt like a brand's "
                              "(paypa1, rnicrosoft, amazon-secure) that is not the brand's",
    "SENDER_DOMAIN_IN_LINKS": "the sender's domain is among the domains the message links "
                              "to (a sender consistent with its links)",
    "LIST_UNSUB_FROM_DOMAIN": "List-Unsubscribe points into the sender's own domain "
                              "(a consistent bulk sender)",
}
