"""The outbound compliance gate for bulk mail: what `mailwarden token headers` mints, in a
message DKIM-signed over those headers, passes; each way of falling short is a named hit."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from filter_server.auth.service import Authenticator
from filter_server.server.authentication import KeyDirVerifier
from mailwarden.tokens import generate_key
from testkit.dns import DkimKey, KnotServer
from tests.filter_server.auth.conftest import message, sign
from tests.filter_server.auth.helpers import RecordingMetrics, authenticate, names, settings

RECIPIENT = "reader@example.net"
LIST = "weekly-news"
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id", b"list-id",
          b"list-unsubscribe", b"list-unsubscribe-post"]
BODY = ("This week's news.\r\n\r\nUnsubscribe: https://unsubscribe.news.test/u/...\r\n")


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("signing-keys")
    (directory / "current").write_text(generate_key() + "\n")
    return directory


def minted_headers(key_dir: Path, address: str = RECIPIENT, scope: str = LIST) -> str:
    """What `mailwarden token headers` prints (the CLI a sender runs)."""
    out = subprocess.run(
        [sys.executable, "-m", "mailwarden.cli", "token", "headers", "--address", address,
         "--scope", scope, "--signing-key-dir", str(key_dir),
         "--base-url", "https://unsubscribe.news.test"],
        check=True, capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("List-Unsubscribe: <https://unsubscribe.news.test/u/")
    return out.replace("\n", "\r\n")


def tampered_token(headers: str) -> str:
    """The minted headers with the token's last characters changed (its MAC breaks)."""
    start = headers.index("/u/") + 3
    end = headers.index(">", start)
    token = headers[start:end]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    return headers[:start] + forged + headers[end:]


@pytest.fixture
def auth(key_dir: Path) -> Iterator[Authenticator]:
    authenticator = Authenticator(RecordingMetrics(),
                                  verify_token=KeyDirVerifier(key_dir, logging.getLogger()))
    yield authenticator
    authenticator.close()


def bulk(key_dir: Path, key: DkimKey, *, extra: str | None = None, signed=SIGNED,
         body: str = BODY, sign_it: bool = True) -> bytes:
    headers = minted_headers(key_dir) + "List-Id: Weekly news <weekly.news.test>\r\n" \
        if extra is None else extra
    raw = message("news@news.test", subject="This week", body=body, extra=headers)
    return sign(raw, key, signed) if sign_it else raw


def gate(auth: Authenticator, knot: KnotServer, raw: bytes, **kw) -> set[str]:
    outcome = authenticate(auth, settings([knot.address], bulk_gate=True), raw, bulk=True,
                           recipients=kw.pop("recipients", (RECIPIENT,)),
                           list_scope=kw.pop("list_scope", LIST), **kw)
    return {n for n in names(outcome) if n.startswith("BULK_")}


def test_minted_headers_in_a_signed_message_pass(auth, knot, key_dir, keys) -> None:
    assert gate(auth, knot, bulk(key_dir, keys["bulk"])) == {"BULK_COMPLIANT"}


def test_each_shortfall_has_its_named_rule(auth, knot, key_dir, keys) -> None:
    minted = minted_headers(key_dir)
    list_id = "List-Id: Weekly news <weekly.news.test>\r\n"
    unsubscribe_only = minted.split("\r\n")[0] + "\r\n"
    cases = {
        "BULK_NO_LIST_UNSUBSCRIBE": bulk(key_dir, keys["bulk"], extra=list_id),
        "BULK_NO_ONECLICK": bulk(key_dir, keys["bulk"], extra=unsubscribe_only + list_id),
        "BULK_UNSUBSCRIBE_NOT_HTTPS": bulk(
            key_dir, keys["bulk"], extra="List-Unsubscribe: <mailto:u@news.test>\r\n"
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" + list_id),
        "BULK_ONECLICK_TOKEN_INVALID": bulk(key_dir, keys["bulk"],
                                            extra=tampered_token(minted) + list_id),
        "BULK_DKIM_MISSING": bulk(key_dir, keys["bulk"], sign_it=False),
        "BULK_DKIM_NOT_ALIGNED": bulk(key_dir, keys["other"]),
        "BULK_DKIM_MISSES_LIST_UNSUBSCRIBE": bulk(
            key_dir, keys["bulk"], signed=[h for h in SIGNED if h != b"list-unsubscribe"]),
        "BULK_DKIM_MISSES_LIST_UNSUBSCRIBE_POST": bulk(
            key_dir, keys["bulk"], signed=[h for h in SIGNED if h != b"list-unsubscribe-post"]),
        "BULK_NO_LIST_ID": bulk(key_dir, keys["bulk"], extra=minted),
        "BULK_NO_VISIBLE_UNSUBSCRIBE": bulk(key_dir, keys["bulk"],
                                            body="This week's news.\r\n"),
    }
    for rule, raw in cases.items():
        hits = gate(auth, knot, raw)
        assert rule in hits, (rule, hits)
        assert "BULK_COMPLIANT" not in hits


def test_token_for_someone_else_or_another_list(auth, knot, key_dir, keys) -> None:
    raw = bulk(key_dir, keys["bulk"])
    assert "BULK_ONECLICK_WRONG_RECIPIENT" in gate(auth, knot, raw,
                                                   recipients=("other@example.net",))
    assert "BULK_ONECLICK_WRONG_LIST" in gate(auth, knot, raw, list_scope="offers")


def test_without_keys_the_token_is_reported_unchecked(knot, key_dir, keys) -> None:
    authenticator = Authenticator(RecordingMetrics())
    try:
        hits = gate(authenticator, knot, bulk(key_dir, keys["bulk"]))
    finally:
        authenticator.close()
    assert hits == {"BULK_ONECLICK_TOKEN_UNCHECKED", "BULK_COMPLIANT"}


def test_gate_only_for_bulk_requests(auth, knot, key_dir, keys) -> None:
    outcome = authenticate(auth, settings([knot.address], bulk_gate=True),
                           bulk(key_dir, keys["bulk"], extra=""), bulk=False)
    assert not {n for n in names(outcome) if n.startswith("BULK_")}
