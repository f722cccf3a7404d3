"""One-click tokens (mailwarden.tokens), issue 20 items 9 and 11:

- new tokens do not reveal the address (or the list) to anyone who sees the URL — ingress
  logs, proxies, link scanners — while every token already issued keeps working (senders
  have millions in flight): fixed vectors of the first format must verify forever;
- an authentic token that is too old, or signed by a key that has been retired, is told
  apart from a forged one, so the endpoint can answer truthfully;
- key rotation keeps a retired key verifying for at least 60 days (CASL).
"""

from __future__ import annotations

import base64
import datetime

import pytest

from mailwarden.tokens import (
    MIN_KEEP_RETIRED_DAYS,
    KeyRing,
    SigningKeyError,
    TokenExpired,
    TokenInvalid,
    TokenUnknownKey,
    generate_key,
    load_keyring,
    mint_token,
    rotate_keys,
    verify_token,
)

GOLDEN_KEY = "golden-vector-signing-key-0123456789abcdef"
# Minted by the first token format (before issue 20): they must verify forever.
GOLDEN_V1 = [
    ("AcH5gEwAAE4gFm9sZC5yZWFkZXJAZXhhbXBsZS5jb20EbmV3c8FImqF6nDC5EPBsPMa1Ekae_o3T-MDojOJNA_"
     "qQRVSn", "old.reader@example.com", "news", 20000),
    ("AcH5gEwAAEo4Emdsb2JhbEBleGFtcGxlLm9yZwEqHUj4iLj8Rmq8fr6aQKjlZdj_H1hTtcozYPQbOiE7L0U",
     "global@example.org", "*", 19000),
]


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_new_tokens_do_not_reveal_the_address_or_the_list():
    keys = KeyRing.from_secrets(generate_key())
    token = mint_token(keys, "Reader.Name@Example.com", "newsletter-weekly")
    raw = _raw(token)
    for secret in (b"reader", b"name", b"example", b"newsletter", b"weekly"):
        assert secret not in raw.lower()
    assert "reader" not in token.lower() and len(token) <= 120
    claims = verify_token(keys, token)
    assert (claims.address, claims.scope) == ("reader.name@example.com", "newsletter-weekly")
    # the same recipient and list the next day is a different URL
    other_day = mint_token(keys, "reader.name@example.com", "newsletter-weekly",
                           issued_day=claims.issued_day + 1)
    assert other_day != token


@pytest.mark.parametrize("token, address, scope, day", GOLDEN_V1)
def test_tokens_already_issued_keep_working(token, address, scope, day):
    keys = KeyRing.from_secrets(GOLDEN_KEY)
    claims = verify_token(keys, token)
    assert (claims.address, claims.scope, claims.issued_day) == (address, scope, day)
    # ...also after the key was rotated to "previous"
    rotated = KeyRing.from_secrets(generate_key(), [GOLDEN_KEY])
    assert verify_token(rotated, token).address == address


def test_any_changed_character_of_a_new_token_is_invalid():
    keys = KeyRing.from_secrets(generate_key())
    token = mint_token(keys, "ann@example.com", "news")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i in range(len(token) - 1):
        flipped = token[:i] + alphabet[(alphabet.index(token[i]) + 1) % 64] + token[i + 1:]
        with pytest.raises(TokenInvalid):
            verify_token(keys, flipped)
    forger = KeyRing.from_secrets(generate_key())
    with pytest.raises(TokenInvalid):
        verify_token(keys, mint_token(forger, "ann@example.com", "news"))


def test_an_authentic_token_that_is_too_old_is_told_apart():
    keys = KeyRing.from_secrets(generate_key())
    token = mint_token(keys, "late@example.com", "news", issued_day=1000)
    with pytest.raises(TokenExpired) as info:
        verify_token(keys, token, max_age_days=60, today=1061)
    assert info.value.claims.address == "late@example.com"  # authentic: its MAC verified
    assert isinstance(info.value, TokenInvalid)              # old callers still refuse it
    assert verify_token(keys, token, max_age_days=60, today=1060).address == "late@example.com"


def test_a_token_of_a_key_no_longer_configured_names_its_key():
    old = KeyRing.from_secrets(generate_key())
    token = mint_token(old, "a@example.com", "news")
    with pytest.raises(TokenUnknownKey) as info:
        verify_token(KeyRing.from_secrets(generate_key()), token)
    assert info.value.key_id == old.current.key_id.hex()


def test_rotation_keeps_retired_keys_for_at_least_60_days(tmp_path):
    first = generate_key()
    (tmp_path / "current").write_text(first + "\n")
    day0 = datetime.date(2026, 1, 1)
    token = mint_token(load_keyring(key_dir=tmp_path, env={}), "a@example.com", "news")

    rotate_keys(tmp_path, today=day0)
    ring = load_keyring(key_dir=tmp_path, env={})
    assert ring.current.key_id != KeyRing.from_secrets(first).current.key_id
    assert [r.isoformat() for r in ring.retired_on] == ["2026-01-01"]
    assert verify_token(ring, token).address == "a@example.com"
    assert first not in repr(ring)

    rotate_keys(tmp_path, today=day0 + datetime.timedelta(days=59))   # within the period
    assert verify_token(load_keyring(key_dir=tmp_path, env={}), token)
    rotate_keys(tmp_path, today=day0 + datetime.timedelta(days=91))   # past keep (90 days)
    ring = load_keyring(key_dir=tmp_path, env={})
    with pytest.raises(TokenUnknownKey):
        verify_token(ring, token)
    assert len(ring.previous) == 2  # the two later keys, each retired < 90 days ago

    with pytest.raises(SigningKeyError, match=str(MIN_KEEP_RETIRED_DAYS)):
        rotate_keys(tmp_path, today=day0, keep_days=30)
    (tmp_path / "previous").write_text(generate_key() + " retired=not-a-date\n")
    with pytest.raises(SigningKeyError, match="retired="):
        load_keyring(key_dir=tmp_path, env={})
