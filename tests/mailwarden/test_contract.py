"""Unit tests (address normalisation: test_addresses.py): the suppression rule, tokens,
header minting, CSV/JSONL rows, and that the committed generated code matches the proto."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from mailwarden.suppression import MailClass, Reason, applies
from mailwarden.tokens import (
    KeyRing,
    SigningKeyError,
    TokenInvalid,
    generate_key,
    load_keyring,
    mint_token,
    verify_token,
)
from mailwarden.unsubscribe_headers import list_unsubscribe_headers
from unsubscribe_store.model import merge_reason
from unsubscribe_store.rows import format_rows, parse_all

REPO = Path(__file__).resolve().parents[2]


def test_suppression_rule():
    news_unsub = {"news": Reason.UNSUBSCRIBE}
    news_complaint = {"news": Reason.COMPLAINT}
    global_bounce = {"*": Reason.BOUNCE}
    bulk, tx = MailClass.BULK, MailClass.TRANSACTIONAL
    assert applies(news_unsub, "news", bulk)
    assert not applies(news_unsub, "news", tx)          # transactional bypasses list scopes
    assert applies(news_complaint, "news", tx)          # ...but never a complaint
    assert applies(global_bounce, "", tx)               # ...and never a global suppression
    assert applies(global_bounce, "other", bulk)
    assert not applies(news_unsub, "other", bulk)       # other lists are unaffected
    assert not applies(news_unsub, "", bulk)            # mail for no list: only global counts
    assert applies(news_unsub, "news", 0)               # unspecified = bulk
    assert applies(news_unsub, "news", "bulk") and not applies(news_unsub, "news", "transactional")
    assert merge_reason(Reason.UNSUBSCRIBE, Reason.COMPLAINT) == Reason.COMPLAINT
    assert merge_reason(Reason.COMPLAINT, Reason.UNSUBSCRIBE) is None
    assert merge_reason(Reason.UNSUBSCRIBE, Reason.BOUNCE) is None


def _flip(token: str, index: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    c = token[index]
    return token[:index] + alphabet[(alphabet.index(c) + 1) % 64] + token[index + 1:]


def test_tokens_round_trip_rotation_and_tampering():
    old, new = generate_key(), generate_key()
    before = KeyRing.from_secrets(old)
    after = KeyRing.from_secrets(new, [old])
    token = mint_token(before, "Ann@Example.com", "News")
    claims = verify_token(before, token)
    assert (claims.address, claims.scope) == ("ann@example.com", "news")
    # After rotation the old key is "previous": tokens already in inboxes keep working.
    assert verify_token(after, token).address == "ann@example.com"
    assert verify_token(after, mint_token(after, "a@b.example", "*")).scope == "*"
    # Once the old key is dropped they stop working.
    with pytest.raises(TokenInvalid):
        verify_token(KeyRing.from_secrets(new), token)
    # Any changed character (address, scope, key id, MAC) invalidates it.
    for index in range(0, len(token) - 1, 3):
        with pytest.raises(TokenInvalid):
            verify_token(after, _flip(token, index))
    for bad in ("", "!!!", "A" * 2000, token + "A", token[:-5], token[:10] + "+" + token[11:]):
        with pytest.raises(TokenInvalid):
            verify_token(after, bad)


def test_tokens_do_not_expire_unless_asked():
    keys = KeyRing.from_secrets(generate_key())
    token = mint_token(keys, "a@b.example", "news", issued_day=1000)
    assert verify_token(keys, token, today=1000 + 10_000).address == "a@b.example"
    assert verify_token(keys, token, max_age_days=60, today=1060).address == "a@b.example"
    with pytest.raises(TokenInvalid):
        verify_token(keys, token, max_age_days=60, today=1061)


def test_key_loading(tmp_path):
    cur, prev = generate_key(), generate_key()
    (tmp_path / "current").write_text(cur + "\n")
    (tmp_path / "previous").write_text(prev + "\n")
    ring = load_keyring(key_dir=tmp_path, env={})
    assert len(ring.previous) == 1
    assert cur not in repr(ring) and prev not in repr(ring)   # never shown
    env_ring = load_keyring(env={"MAILWARDEN_SIGNING_KEY": cur,
                                 "MAILWARDEN_PREVIOUS_SIGNING_KEYS": prev})
    assert env_ring.current.key_id == ring.current.key_id
    with pytest.raises(SigningKeyError, match="too short"):
        KeyRing.from_secrets("short")
    with pytest.raises(SigningKeyError, match="no signing key"):
        load_keyring(env={})
    with pytest.raises(SigningKeyError) as info:
        load_keyring(key_dir=tmp_path / "missing", env={})
    assert "cannot read" in str(info.value)


def test_list_unsubscribe_headers():
    keys = KeyRing.from_secrets(generate_key())
    headers = list_unsubscribe_headers("Ann@Example.com", "news", keys=keys,
                                       base_url="https://unsub.example.com/",
                                       mailto="unsubscribe@example.com")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = headers["List-Unsubscribe"].split(", ")
    assert https.startswith("<https://unsub.example.com/u/") and https.endswith(">")
    assert mailto == "<mailto:unsubscribe@example.com>"
    token = https[len("<https://unsub.example.com/u/"):-1]
    assert verify_token(keys, token).address == "ann@example.com"
    with pytest.raises(ValueError, match="https"):
        list_unsubscribe_headers("a@b.example", "x", keys=keys, base_url="http://unsub.example.com")
    assert list_unsubscribe_headers("a@b.example", "x", keys=keys,
                                    base_url="http://127.0.0.1:8080")


def test_rows_csv_and_jsonl_round_trip():
    csv_data = (b"\xef\xbb\xbfEmail Address,List,reason,first_seen\n"
                b"Ann@Example.com,news,complaint,2024-01-02T03:04:05Z\n"
                b"bob@example.org,,,1700000000\n"
                b"\n"
                b"not-an-address,news,,\n"
                b"carol@example.net,news,weird,\n")
    rows, errors = parse_all("csv", csv_data, default_scope="*")
    assert [(r.address, r.scope, r.reason) for r in rows] == [
        ("ann@example.com", "news", Reason.COMPLAINT), ("bob@example.org", "*", Reason.UNSUBSCRIBE)]
    assert rows[0].first_seen.year == 2024 and rows[1].first_seen.year == 2023
    assert [e.line for e in errors] == [5, 6]
    assert "unknown reason" in errors[1].message

    from unsubscribe_store.model import Suppression
    supp = [Suppression(r.address, r.scope, r.reason, r.source, r.first_seen, i)
            for i, r in enumerate(rows, 1)]
    for fmt in ("csv", "jsonl"):
        again, errs = parse_all(fmt, format_rows(fmt, supp, header=True))
        assert not errs
        assert [(r.address, r.scope, r.reason, r.first_seen) for r in again] == \
            [(s.address, s.scope, s.reason, s.first_seen) for s in supp]
    _, errs = parse_all("csv", b"name,list\nx,y\n")
    assert "no 'address' column" in errs[0].message
    _, errs = parse_all("jsonl", b'{"address": "a@b.example"}\n[1]\n{bad\n')
    assert [e.line for e in errs] == [2, 3]


def test_generated_code_matches_proto(tmp_path):
    """The committed mailwarden/unsubscribe/v1 code must be what scripts/gen-protos.sh makes."""
    subprocess.run(["bash", str(REPO / "scripts/gen-protos.sh"), str(tmp_path)], check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    generated = tmp_path / "mailwarden/unsubscribe/v1"
    for name in ("unsubscribe_pb2.py", "unsubscribe_pb2.pyi", "unsubscribe_pb2_grpc.py"):
        assert filecmp.cmp(generated / name, REPO / "mailwarden/unsubscribe/v1" / name,
                           shallow=False), f"{name} drifted: run scripts/gen-protos.sh"


def test_a_token_has_one_spelling():
    """base64's decoder takes "+" and "/" for the URL-safe "-" and "_": a token spelled
    with them is not one we issued (the tampering test above caught it 1 time in 64)."""
    keys = KeyRing.from_secrets(generate_key())
    tokens = (mint_token(keys, f"u{n}@example.com", "news") for n in range(500))
    token = next(t for t in tokens if "-" in t and "_" in t)
    assert verify_token(keys, token).scope == "news"
    for respelled in (token.replace("-", "+", 1), token.replace("_", "/", 1)):
        with pytest.raises(TokenInvalid):
            verify_token(keys, respelled)
