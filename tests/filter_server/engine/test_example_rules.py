"""The example policy's rules for today's spam, and the two fixed ones: each fires on a
message it is written for and stays quiet on a similar honest one."""

from __future__ import annotations

from pathlib import Path

import pytest

from filter_server.engine.fitting import compile_policy
from filter_server.policy.validate import load_policy_file

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "spampolicy.yaml"


@pytest.fixture(scope="module")
def policy():
    return compile_policy(load_policy_file(EXAMPLE, base_dir=EXAMPLE.parent), None)


def plain(body: str = "Hello, see you tomorrow.", *, sender: str = "Alice <alice@example.org>",
          date: str = "Tue, 03 Mar 2026 10:15:00 +0100") -> bytes:
    return (f"From: {sender}\nTo: bob@example.com\nSubject: note\nDate: {date}\n"
            f"Message-ID: <1@example.org>\nContent-Type: text/plain; charset=utf-8\n\n"
            f"{body}\n").encode()


def html(links: str) -> bytes:
    return ("From: Alice <alice@example.org>\nTo: bob@example.com\nSubject: note\n"
            "Content-Type: text/html; charset=utf-8\n\n"
            f"<html><body><p>Hello</p>{links}</body></html>\n").encode()


def attached(filename: str, ctype: str = "application/octet-stream") -> bytes:
    return ("From: Alice <alice@example.org>\nTo: bob@example.com\nSubject: files\n"
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
            "--b\nContent-Type: text/plain\n\nsee attached\n"
            f"--b\nContent-Type: {ctype}; name=\"{filename}\"\n"
            f"Content-Disposition: attachment; filename=\"{filename}\"\n"
            "Content-Transfer-Encoding: base64\n\nAAAA\n--b--\n").encode()


CASES = {
    "DATE_YEAR_BOGUS": (plain(date="Tue, 03 Mar 2102 10:15:00 +0100"),
                        plain(date="Tue, 03 Mar 2026 10:15:00 +0100")),
    "FROM_NO_NAME_ANGLE": (plain(sender="<deals4u@example.net>"),
                           plain(sender="<no-reply@github.example>")),
    "URI_IP_HOST": (html('<a href="http://192.0.2.7/login">x</a>'),
                    html('<a href="https://example.org/2.0.1.4">x</a>')),
    "URI_PUNYCODE": (html('<a href="https://xn--pypal-4ve.com/">x</a>'),
                     html('<a href="https://www.example.org/xn-info">x</a>')),
    "URI_BRAND_PREFIX": (html('<a href="https://paypal.com.secure-login.example/">x</a>'),
                         html('<a href="https://www.paypal.com/signin">x</a>')),
    "URI_ABUSED_TLD": (html('<a href="https://prize-claim.xyz/win">x</a>'),
                       html('<a href="https://example.org/page.xyz">x</a>')),
    "URI_SHORTENER": (html('<a href="https://bit.ly/3abcDEF">x</a>'),
                      html('<a href="https://bitly.example.org/3abc">x</a>')),
    "PHISH_ACCOUNT_THREAT": (plain("Your mailbox has been suspended due to unusual activity."),
                             plain("The meeting room account has plenty of space.")),
    "PHISH_VERIFY_REQUEST": (plain("Please verify your account by signing in below."),
                             plain("Please review the patch before Friday.")),
    "PHISH_DEADLINE": (plain("Your files will be permanently deleted unless you act."),
                       plain("We will meet within the week.")),
    "CRYPTO_LURE": (plain("Enter your seed phrase to claim the airdrop."),
                    plain("The garden seeds arrived; phrase the reply nicely.")),
    "BTC_ADDRESS": (plain("Pay to 1BoatSLRHtKNngkdXEeobR76b53LETtpyT within two days."),
                    plain("Order number 1000 2000 3000, reference ABCDEF.")),
    "PARCEL_LURE": (plain("Your package is on hold. Pay the redelivery fee of $1.99."),
                    plain("Your package was delivered to the front desk.")),
    "MONEY_REFUND_LURE": (plain("You have won! Claim your prize today."),
                          plain("The refund policy is on our website.")),
    "ATTACH_EXECUTABLE": (attached("invoice.exe"), attached("invoice.pdf", "application/pdf")),
    "ATTACH_MACRO_DOCUMENT": (attached("report.docm"), attached("report.docx")),
    "ATTACH_HTML": (attached("secure-message.html", "text/html"), attached("photo.jpg",
                                                                         "image/jpeg")),
    "ATTACH_ARCHIVE_EXEC": (attached("invoice.pdf.zip", "application/zip"),
                            attached("photos.zip", "application/zip")),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires_on_its_message_and_not_on_the_honest_one(policy, rule):
    hit, miss = CASES[rule]
    assert rule in {h.name for h in policy.rule_hits(policy.parse(hit))}
    assert rule not in {h.name for h in policy.rule_hits(policy.parse(miss))}


def test_every_modern_year_is_a_real_year(policy):
    """The old DATE_YEAR_BOGUS matched every year from 2010 to 2099."""
    for year in (2003, 2010, 2019, 2026, 2049, 2099):
        parsed = policy.parse(plain(date=f"Fri, 01 Jan {year} 00:00:00 +0000"))
        assert "DATE_YEAR_BOGUS" not in {h.name for h in policy.rule_hits(parsed)}, year


def test_every_case_names_a_rule_of_the_example():
    loaded = load_policy_file(EXAMPLE, base_dir=EXAMPLE.parent)
    declared = {r["name"] for r in loaded["rules"]} | {r["name"] for r in loaded["metaRules"]}
    assert set(CASES) <= declared
