"""List-Unsubscribe headers (mailwarden.unsubscribe_headers): what goes into a header is a
URI and nothing else — CR/LF in the base URL or angle brackets in the mailto alternative
would let the caller's input write other headers (issue 20, item 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailwarden.tokens import KeyRing, generate_key
from mailwarden.unsubscribe_headers import list_unsubscribe_headers

KEYS = KeyRing.from_secrets(generate_key())
REPO = Path(__file__).resolve().parents[2]


def headers(**kw):
    return list_unsubscribe_headers("ann@example.com", "news", keys=KEYS,
                                    **{"base_url": "https://u.example.com", **kw})


def test_good_headers():
    h = headers(mailto="unsubscribe@example.com?subject=unsubscribe")
    value = h["List-Unsubscribe"]
    assert value.startswith("<https://u.example.com/u/")
    assert value.endswith(", <mailto:unsubscribe@example.com?subject=unsubscribe>")
    assert headers(base_url="https://u.example.com/mail/")["List-Unsubscribe"] \
        .startswith("<https://u.example.com/mail/u/")


@pytest.mark.parametrize("base_url", [
    "https://u.example.com\r\nBcc: victim@example.com",
    "https://u.example.com/\nX-Injected: 1",
    "https://u.example.com/a b",
    "https://u.example.com/<x>",
    'https://u.example.com/"',
    "https://u.example.com\x00",
])
def test_a_base_url_that_is_not_a_plain_uri_is_refused(base_url):
    with pytest.raises(ValueError, match="base URL"):
        headers(base_url=base_url)


@pytest.mark.parametrize("mailto", [
    "unsub@example.com>, <https://evil.example/u/x",
    "unsub@example.com\r\nBcc: victim@example.com",
    "mailto:unsub@example.com> <x",
    "un sub@example.com",
    "https://evil.example/",
    "mailto:",
])
def test_a_mailto_that_is_not_a_mailto_uri_is_refused(mailto):
    with pytest.raises(ValueError, match="mailto"):
        headers(mailto=mailto)


def test_the_command_refuses_injection_with_one_line():
    env = {**os.environ, "MAILWARDEN_SIGNING_KEY": generate_key()}
    for extra in (["--base-url", "https://u.example.com\r\nBcc: victim@example.com"],
                  ["--base-url", "https://u.example.com", "--mailto",
                   "unsub@example.com>, <https://evil.example/"]):
        result = subprocess.run([sys.executable, "-m", "mailwarden.cli", "token", "headers",
                                 "--address", "ann@example.com", "--scope", "news", *extra],
                                cwd=REPO, env=env, capture_output=True, timeout=60)
        assert result.returncode == 2, result.stdout
        assert result.stdout == b"" and b"Traceback" not in result.stderr
