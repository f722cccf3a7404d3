"""The built-in traits: what a reader would call a disguised link, a look-alike brand and a
consistent bulk sender, and what they must leave alone."""

from __future__ import annotations

import pytest

from filter_server.engine.traits import lookalike_brand, registered_domain, traits
from filter_server.message import parse_message


def html_mail(body: str, headers: str = "From: Shop <news@shop.example>\r\n") -> bytes:
    return (headers + "To: you@example.org\r\nSubject: hi\r\nContent-Type: text/html\r\n\r\n"
            + body).encode()


def traits_of(raw: bytes) -> set[str]:
    return traits(parse_message(raw))


@pytest.mark.parametrize("domain,brand", [
    ("paypa1.com", "paypal"), ("rnicrosoft.com", "microsoft"), ("arnazon.net", "amazon"),
    ("amazon-secure.info", "amazon"), ("gooogle.com", "google"),
    ("xn--pypal-4ve.com", "paypal"),            # Cyrillic а in punycode
    ("dhl-parcel.info", "dhl"),
])
def test_look_alike_brand_domains_are_named(domain: str, brand: str) -> None:
    assert lookalike_brand(domain) == brand


@pytest.mark.parametrize("domain", [
    "paypal.com", "paypal.co.uk", "apple.com", "applebees.com", "chaser.com",
    "amazonaws.com", "googleapis.com", "linkedin.com", "example.org", "chase.com",
])
def test_brands_own_and_unrelated_domains_are_not_look_alikes(domain: str) -> None:
    assert lookalike_brand(domain) is None


def test_registered_domain_keeps_country_second_levels() -> None:
    assert registered_domain("www.shop.co.uk") == "shop.co.uk"
    assert registered_domain("a.b.example.com") == "example.com"


def test_link_text_naming_a_brand_that_goes_elsewhere() -> None:
    raw = html_mail('<p>Sign in: <a class="x" href="http://login.evil.example/p">'
                    '<b>https://www.paypal.com/signin</b></a></p>')
    assert traits_of(raw) >= {"LINK_TEXT_OTHER_DOMAIN", "LINK_TEXT_BRAND_ELSEWHERE"}


def test_link_text_of_another_shop_is_only_the_helper_trait() -> None:
    raw = html_mail('<a href="http://click.tracker.example/r?1">www.deals.example</a>')
    assert traits_of(raw) == {"LINK_TEXT_OTHER_DOMAIN"}   # no brand: not the phishing form


def test_honest_links_fire_only_the_consistent_sender_trait() -> None:
    raw = html_mail('<a href="https://www.shop.example/deals">shop.example</a> '
                    '<a href="https://shop.example/x">read more</a> '
                    '<a href="mailto:help@shop.example">help@other.example</a>')
    assert traits_of(raw) == {"SENDER_DOMAIN_IN_LINKS"}
    elsewhere = html_mail('<a href="https://cheap.example/x">read more</a>')
    assert traits_of(elsewhere) == set()


def test_a_look_alike_sender_or_link_host() -> None:
    assert "LOOKALIKE_BRAND_DOMAIN" in traits_of(
        html_mail("hi", "From: PayPal <service@paypa1.com>\r\n"))
    assert "LOOKALIKE_BRAND_DOMAIN" in traits_of(
        html_mail('<a href="https://secure.arnazon.net/login">Sign in</a>'))


def test_list_unsubscribe_in_the_senders_domain() -> None:
    own = "From: Shop <news@mail.shop.example>\r\nList-Unsubscribe: <mailto:u@shop.example>\r\n"
    other = "From: Shop <news@shop.example>\r\nList-Unsubscribe: <https://esp.example/u/1>\r\n"
    assert "LIST_UNSUB_FROM_DOMAIN" in traits_of(html_mail("hi", own))
    assert "LIST_UNSUB_FROM_DOMAIN" not in traits_of(html_mail("hi", other))
