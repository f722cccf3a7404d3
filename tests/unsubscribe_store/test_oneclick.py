"""RFC 8058 one-click endpoint against a real server process (both backends): POST writes
once, GET writes nothing, forged/tampered tokens write nothing and get an indistinguishable
answer, urlencoded and multipart bodies, key rotation."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import pytest

from mailwarden.tokens import KeyRing, generate_key, mint_token
from mailwarden.unsubscribe_headers import list_unsubscribe_headers
from testkit.store import addresses_in, count_rows


async def _request(method: str, url: str, body: str = "urlencoded") -> tuple[int, dict, str]:
    async with aiohttp.ClientSession() as session:
        kwargs = {}
        if method == "POST":
            if body == "urlencoded":
                kwargs["data"] = {"List-Unsubscribe": "One-Click"}
            elif body == "multipart":
                form = aiohttp.FormData(default_to_multipart=True)
                form.add_field("List-Unsubscribe", "One-Click")
                kwargs["data"] = form
            elif body == "missing":
                kwargs["data"] = {"something": "else"}
        async with session.request(method, url, **kwargs) as response:
            return response.status, dict(response.headers), await response.text()


def request(method: str, url: str, body: str = "urlencoded") -> tuple[int, dict, str]:
    return asyncio.run(_request(method, url, body))


def _comparable(headers: dict) -> dict:
    return {k: v for k, v in headers.items() if k.lower() != "date"}


def test_get_renders_a_confirmation_form_and_writes_nothing(backend, store, store_args,
                                                            signing_keys):
    _, keys, _ = signing_keys
    url = f"{store.http_url}/u/{mint_token(keys, 'get@example.com', 'news')}"
    for _ in range(3):  # link scanners prefetch, sometimes repeatedly
        status, headers, text = request("GET", url)
        assert status == 200
        assert '<form method="post">' in text
        assert 'name="List-Unsubscribe" value="One-Click"' in text
        assert headers["Referrer-Policy"] == "no-referrer"
    status, _, _ = request("HEAD", url)
    assert status == 200
    assert count_rows(backend, store_args, "unsubscribe_changes") == 0


@pytest.mark.parametrize("body", ["urlencoded", "multipart"])
def test_post_writes_once(backend, store, store_args, signing_keys, body):
    _, keys, _ = signing_keys
    url = f"{store.http_url}/u/{mint_token(keys, 'Post@Example.com', 'News')}"
    first = request("POST", url, body)
    second = request("POST", url, body)
    assert first[0] == second[0] == 200
    assert "no longer receive" in first[2]
    assert addresses_in(backend, store_args) == {("post@example.com", "news")}
    assert count_rows(backend, store_args, "unsubscribe_changes") == 1


def test_forged_and_tampered_tokens_write_nothing_and_look_the_same(backend, store, store_args,
                                                                    signing_keys):
    _, keys, _ = signing_keys
    valid = mint_token(keys, "victim@example.com", "news")
    reference = request("POST", f"{store.http_url}/u/{valid}")
    assert reference[0] == 200
    baseline = count_rows(backend, store_args, "unsubscribe_changes")
    stranger = KeyRing.from_secrets(generate_key())
    forged = [
        _with_key_id(mint_token(stranger, "other@example.com", "news"),
                     keys.current.key_id),                         # someone else's key
        valid[:12] + ("A" if valid[12] != "A" else "B") + valid[13:],   # tampered payload
        valid[:-3] + ("A" if valid[-3] != "A" else "B") + valid[-2:],   # tampered MAC
        "A" * 80,                                                  # garbage
        "not_even_base64!",
    ]
    for token in forged:
        for body in ("urlencoded", "multipart"):
            status, headers, text = request("POST", f"{store.http_url}/u/{token}", body)
            assert (status, text) == (reference[0], reference[2])
            assert _comparable(headers) == _comparable(reference[1])
    assert count_rows(backend, store_args, "unsubscribe_changes") == baseline
    assert addresses_in(backend, store_args) == {("victim@example.com", "news")}


def _with_key_id(token: str, key_id: bytes) -> str:
    """The token with its key id replaced: a forger's key posing as ours."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return base64.urlsafe_b64encode(raw[:1] + key_id + raw[5:]).rstrip(b"=").decode()


def test_an_authentic_expired_token_is_honoured(backend, start_store, store_args,
                                                signing_keys):
    """Issue 20 item 9: a link older than --token-max-age-days said "You will no longer
    receive these messages" and recorded nothing. The request is genuine (the token
    verifies): it must be recorded."""
    _, keys, _ = signing_keys
    store = start_store(store_args, extra_args=["--token-max-age-days", "60"])
    today = int(time.time() // 86400)
    old = mint_token(keys, "old-link@example.com", "news", issued_day=today - 400)
    status, _, text = request("POST", f"{store.http_url}/u/{old}")
    assert status == 200 and "no longer receive" in text
    assert addresses_in(backend, store_args) == {("old-link@example.com", "news")}
    metrics = asyncio.run(_metrics(store.metrics_url))
    assert 'mailwarden_unsubscribe_oneclick_total{outcome="recorded_expired"} 1.0' in metrics


def test_a_token_of_a_retired_key_gets_a_truthful_page(backend, store, store_args):
    """A token whose key is no longer configured cannot be checked, so nothing is recorded —
    and the page must not claim otherwise; it says what to do instead."""
    retired = KeyRing.from_secrets(generate_key())
    token = mint_token(retired, "retired@example.com", "news")
    status, _, text = request("POST", f"{store.http_url}/u/{token}")
    assert status == 200
    assert "no longer receive" not in text
    assert "recent message" in text
    assert count_rows(backend, store_args, "unsubscribe_changes") == 0


async def _metrics(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


def test_post_without_one_click_body_is_rejected_before_the_token(backend, store, store_args,
                                                                  signing_keys):
    _, keys, _ = signing_keys
    valid = mint_token(keys, "nobody@example.com", "news")
    good = request("POST", f"{store.http_url}/u/{valid}", "missing")
    bad = request("POST", f"{store.http_url}/u/{valid}x", "missing")
    assert good[0] == bad[0] == 400 and good[2] == bad[2]
    assert count_rows(backend, store_args, "unsubscribe_changes") == 0


def test_tokens_from_the_previous_key_still_work(backend, store, store_args, signing_keys):
    _, _, previous_only = signing_keys
    headers = list_unsubscribe_headers("old@example.com", "*", keys=previous_only,
                                       base_url=store.http_url)
    url = headers["List-Unsubscribe"].strip("<>")
    assert request("POST", url)[0] == 200
    assert addresses_in(backend, store_args) == {("old@example.com", "*")}


def test_readyz_and_healthz(store):
    assert request("GET", f"{store.http_url}/healthz")[0] == 200
    assert request("GET", f"{store.http_url}/readyz")[0] == 200
