"""RFC 8058 one-click unsubscribe endpoint (aiohttp).

``POST /u/<token>`` with the body ``List-Unsubscribe=One-Click`` (form-urlencoded or
multipart/form-data — aiohttp parses both) records the suppression the token names and
answers only after the commit. A forged or tampered token writes nothing and gets exactly
the same status, headers and body as a valid one, so the endpoint cannot be used to test
tokens. An authentic token older than the maximum age is still recorded: the request is
genuine, and mailbox providers POST where nobody reads an "expired" page. A token whose key
is no longer configured cannot be checked: nothing is recorded and the page says so (this
tells a caller only that the key id is not ours, nothing about any address).
``GET /u/<token>`` — what link scanners and prefetchers send — never changes anything: it
renders a page whose button POSTs the same body. The page does not show the address either,
since that would reveal whether the token is valid.

Tokens are bearer capabilities, so they are never logged; the access log is off and our own
log lines carry no token.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time

from aiohttp import web

from mailwarden.addresses import AddressInvalid, normalize_address, normalize_scope
from mailwarden.suppression import Reason
from mailwarden.tokens import (
    KeyRing,
    TokenClaims,
    TokenExpired,
    TokenInvalid,
    TokenUnknownKey,
    verify_token,
)
from unsubscribe_store import metrics
from unsubscribe_store.model import StoreUnavailable
from unsubscribe_store.service import ServerState

log = logging.getLogger(__name__)

STATE_KEY = web.AppKey("state", ServerState)
KEYS_KEY = web.AppKey("keys", KeyRing)
MAX_AGE_KEY = web.AppKey("max_age_days", int)
BODY_TIMEOUT_KEY = web.AppKey("body_timeout", float)
ANSWER_SECONDS_KEY = web.AppKey("answer_seconds", float)

# A mailbox provider POSTs with a timeout of its own, and a request that hangs past it is
# neither acknowledged nor clearly refused. While the database cannot commit (a failover,
# a synchronous standby gone), 503 with Retry-After within this many seconds says "try
# again" in a form every client understands. The write may still commit after the 503;
# the retry is then a replay.
DEFAULT_ANSWER_SECONDS = 3.0
RETRY_AFTER_SECONDS = "30"
SOURCE = "one-click"

_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # The token is in the URL: never send it onward in a Referer.
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
          "color:#222}button{font-size:1.1rem;padding:.6rem 1.4rem;cursor:pointer}")


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<meta name=\"robots\" content=\"noindex\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
            f"</body></html>")
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers=_HEADERS)


def _try_again() -> web.Response:
    response = _page("Please try again", "<p>We could not record your request right now. "
                     "Please try again in a few minutes.</p>", status=503)
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


CONFIRM_BODY = ("<p>Do you want to stop receiving these messages?</p>"
                "<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" "
                "value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>")
DONE_BODY = "<p>You will no longer receive these messages.</p>"
UNKNOWN_KEY_BODY = ("<p>This unsubscribe link can no longer be used, so nothing was changed. "
                    "Please use the unsubscribe link in a recent message from the sender, or "
                    "ask the sender to remove you.</p>")


async def confirm_page(request: web.Request) -> web.Response:
    """GET: never writes, never checks the token (its validity must not show)."""
    return _page("Unsubscribe", CONFIRM_BODY)


class _BodyTimeout(Exception):
    """The POST body did not arrive within the body timeout."""


async def _one_click_value(request: web.Request) -> str | None:
    """The ``List-Unsubscribe`` field of the POST body (urlencoded or multipart/form-data),
    None when the body is not such a form. Raises _BodyTimeout, or ConnectionError when the
    client went away."""
    try:
        async with asyncio.timeout(request.app[BODY_TIMEOUT_KEY]):
            form = await request.post()
    except TimeoutError:
        raise _BodyTimeout() from None
    except ConnectionError as exc:  # the client went away: nobody reads an answer
        metrics.HTTP_REJECTED.labels("disconnected").inc()
        log.debug("client disconnected mid-request (%s)", type(exc).__name__)
        raise
    except (ValueError, UnicodeDecodeError, web.HTTPException) as exc:
        log.debug("one-click body is not a form (%s)", type(exc).__name__)
        return None
    value = form.get("List-Unsubscribe")
    return value if isinstance(value, str) else None


async def one_click(request: web.Request) -> web.Response:
    started = time.perf_counter()
    try:
        value = await _one_click_value(request)
    except _BodyTimeout:
        metrics.HTTP_REJECTED.labels("body_timeout").inc()
        log.debug("one-click body not received within %gs", request.app[BODY_TIMEOUT_KEY])
        response = _page("Request timeout", "<p>The request body did not arrive in time.</p>",
                         status=408)
        response.force_close()
        return response
    # Checked before the token, so this answer is the same for valid and invalid tokens.
    if value is None or value.strip() != "One-Click":
        metrics.ONECLICK.labels("bad_request").inc()
        return _page("Unsubscribe", "<p>This request is missing "
                     "<code>List-Unsubscribe=One-Click</code>.</p>", status=400)
    state = request.app[STATE_KEY]
    expired = False
    try:
        try:
            claims: TokenClaims = verify_token(request.app[KEYS_KEY], request.match_info["token"],
                                               max_age_days=request.app[MAX_AGE_KEY])
        except TokenExpired as exc:  # authentic: honour it, count it apart
            claims, expired = exc.claims, True
        address = normalize_address(claims.address)
        scope = normalize_scope(claims.scope)
    except TokenUnknownKey as exc:
        metrics.ONECLICK.labels("unknown_key").inc()
        # The key id is a one-way hash: safe to log, and it tells operators which key they
        # dropped too early.
        log.warning("one-click POST with a token of key %s, which is not configured: nothing "
                    "recorded (keep retired keys in 'previous' for at least 60 days)",
                    exc.key_id)
        return _page("Link no longer valid", UNKNOWN_KEY_BODY)
    except (TokenInvalid, AddressInvalid):
        metrics.ONECLICK.labels("rejected").inc()
        log.info("one-click POST with an invalid token ignored")
        return _page("Unsubscribed", DONE_BODY)
    if state.store.durability == "replicated" and not state.ready:
        metrics.ONECLICK.labels("unavailable").inc()
        return _try_again()
    try:
        async with asyncio.timeout(request.app[ANSWER_SECONDS_KEY]):
            result = await state.store.unsubscribe(address, scope, Reason.UNSUBSCRIBE, SOURCE)
    except StoreUnavailable as exc:
        metrics.ONECLICK.labels("unavailable").inc()
        log.warning("one-click unsubscribe not recorded: %s", exc)
        return _try_again()
    except TimeoutError:
        metrics.ONECLICK.labels("unavailable").inc()
        log.warning("one-click unsubscribe not committed within %gs: answered 503",
                    request.app[ANSWER_SECONDS_KEY])
        return _try_again()
    outcome = "replay" if result.already_existed else "recorded"
    metrics.ONECLICK.labels(f"{outcome}_expired" if expired else outcome).inc()
    metrics.ACK_SECONDS.observe(time.perf_counter() - started)
    return _page("Unsubscribed", DONE_BODY)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.ready and not state.draining:
        return web.Response(text="ready\n")
    return web.Response(text=f"not ready: {state.reason}\n", status=503)


def build_app(state: ServerState, keys: KeyRing, *, max_age_days: int = 0,
              body_timeout: float = 10.0,
              answer_seconds: float = DEFAULT_ANSWER_SECONDS) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[STATE_KEY] = state
    app[KEYS_KEY] = keys
    app[MAX_AGE_KEY] = max_age_days
    app[BODY_TIMEOUT_KEY] = body_timeout
    app[ANSWER_SECONDS_KEY] = answer_seconds
    app.router.add_get("/u/{token}", confirm_page)
    app.router.add_post("/u/{token}", one_click)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
