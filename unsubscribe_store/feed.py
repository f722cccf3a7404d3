"""ChangeFeed: one reader of the change log for every Watch stream of the process.

Without it each Watch stream read the log after each wake-up and queried the head for each
heartbeat: 300 streams at a 0.1 s heartbeat were thousands of queries a second, and every
Unsubscribe waited behind them (issue 20, item 14). The feed reads the log once per change
burst into a bounded in-memory window and keeps the head; streams take their changes from
the window and their heartbeats from memory. A stream whose cursor is older than the window
(a consumer resuming from far behind) reads the database itself, a page at a time, until it
is inside the window again.

The feed is woken by the store's notifier (local commits, and PostgreSQL NOTIFY for commits
of other replicas) and polls the head every ``poll_seconds`` in case a notification was
lost, so the head a heartbeat reports lags the database by at most that long.

A heartbeat tells a consumer "you have everything the store has committed": a filter pod's
cache answers SUPPRESSION_FRESH on the strength of it. So heartbeats may only vouch for a
head the feed confirmed from the database recently: ``confirmed()`` is true while the last
complete read (head read, and every change up to it read) started at most ``vouch_seconds``
ago (``VOUCH_POLLS`` polls: a slow read or two under load is not an outage). While the
database cannot be read — down, hung, unreachable, failing over — the feed's reads fail or
hang, it stops being confirmed, and Watch streams send no heartbeats: consumers go stale
after their own ``stale_after`` instead of trusting a head that commits elsewhere may have
passed. The next complete read confirms the feed again and wakes the streams.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from unsubscribe_store.model import Change, StoreUnavailable
from unsubscribe_store.store import Store

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 20_000
DEFAULT_POLL_SECONDS = 1.0
# A heartbeat vouches for a head confirmed at most this many poll intervals ago.
VOUCH_POLLS = 3


class LogRewound(Exception):
    """The store's head went below sequences already handed out (a restore, or a failover
    to a replica that missed commits): consumers ahead of it must take a new snapshot."""


class ChangeFeed:
    def __init__(self, store: Store, *, window: int = DEFAULT_WINDOW,
                 poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.vouch_seconds = VOUCH_POLLS * poll_seconds
        # time.monotonic() at the start of the last read that reached the database's head
        # (None: never): as of then, the database held nothing after ``head``.
        self.confirmed_at: float | None = None
        self._window: collections.deque[Change] = collections.deque(maxlen=window)
        self.head = 0          # last sequence read from the log (= the store's head)
        self.known = False     # head has been read at least once
        self.error = ""        # why the last read failed ("" when it did not)
        self.generation = 0    # incremented when the log was found rewound
        # Watch streams following the feed. With none, the feed keeps the head only: a bulk
        # import's changes were read and turned into objects nobody took (measured: most of
        # the store's event-loop time during an import). A stream that starts later reads
        # the database until it is inside the window, as one resuming from far behind does.
        self.followers = 0
        self._event = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._reported = False  # the unconfirmed state was logged (once per outage)

    # --- for Watch streams -----------------------------------------------------------------
    def arm(self) -> asyncio.Event:
        """Take this before looking at the feed, then wait on it: an update in between
        still wakes the waiter."""
        return self._event

    def confirmed_age(self) -> float:
        """Seconds since the head was last confirmed (inf: never)."""
        if self.confirmed_at is None:
            return float("inf")
        return time.monotonic() - self.confirmed_at

    def confirmed(self) -> bool:
        """Whether ``head`` was confirmed as the database's head within ``vouch_seconds``:
        only then may a heartbeat report it (see the module docstring)."""
        return self.confirmed_age() <= self.vouch_seconds

    def after(self, cursor: int, limit: int) -> list[Change] | None:
        """Changes after ``cursor`` from the window (at most ``limit``), or None when the
        window no longer reaches back to ``cursor`` (read the database instead)."""
        if cursor >= self.head:
            return []
        if not self._window or self._window[0].sequence > cursor + 1:
            return None
        start = cursor + 1 - self._window[0].sequence
        end = min(len(self._window), start + limit)
        return [self._window[i] for i in range(start, end)]

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        # asyncio.timeout: no task per wait (wait_for makes one), which mattered with
        # a thousand streams waking on every change.
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            pass

    # --- the reader ------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="change-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    def _publish(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def _run(self) -> None:
        while True:
            wake = self.store.notifier.arm()
            started = time.monotonic()
            try:
                reached = await self._catch_up()
                self.error = ""
            except StoreUnavailable as exc:
                reached = False
                self.error = str(exc)
            except Exception as exc:  # keep feeding; the next poll retries
                reached = False
                log.exception("change feed read failed")
                self.error = f"{type(exc).__name__}: {exc}"
            if reached:
                self._confirm(started)
            await self.store.notifier.wait(wake, self.poll_seconds)

    def _confirm(self, started: float) -> None:
        was = self.confirmed()
        self.confirmed_at = started
        # A read that hung through an outage returns with its old start: it confirms
        # nothing recent, so the streams stay quiet until a read that does.
        if not was and self.confirmed():
            if self._reported:
                log.info("change feed: the database answered again; Watch heartbeats resume "
                         "at sequence %d", self.head)
                self._reported = False
            # Wake the streams now rather than at their next heartbeat tick.
            self._publish()

    def report_unconfirmed(self) -> None:
        """Log, once per outage, that heartbeats are being withheld (called by a stream
        that found the feed unconfirmed: a hung read never returns to say so itself)."""
        if not self._reported and self.confirmed_at is not None:
            log.warning("change feed: the database's head not confirmed for %.1fs (%s): Watch "
                        "heartbeats withheld, so consumers go stale, until it is",
                        time.monotonic() - self.confirmed_at,
                        self.error or "a read has not returned")
            self._reported = True

    async def _catch_up(self) -> bool:
        """Read the head and every change up to it; True when the feed reached the head
        it read (then nothing after ``head`` existed when this read started)."""
        head = await self.store.head()
        if self.known and head < self.head:
            log.error("the change log went back from %d to %d (restore or failover): "
                      "watchers ahead of it take a new snapshot", self.head, head)
            self._window.clear()
            self.head = head
            self.generation += 1
            self._publish()
            return True
        if not self.known:
            self.head, self.known = head, True
            self._publish()
        if not self.followers:
            if head > self.head:
                self._window.clear()
                self.head = head
                self._publish()
            return True
        while self.head < head:
            changes = await self.store.changes_after(self.head, 1000)
            if not changes:
                break
            for change in changes:
                if change.sequence != self.head + 1:
                    # A hole in the log: keep nothing after it; streams reading the database
                    # find the same hole and end with DATA_LOSS.
                    log.error("change log gap after %d (next %d)", self.head, change.sequence)
                    self._window.clear()
                    self.head = change.sequence - 1
                self._window.append(change)
                self.head = change.sequence
            self._publish()
            if len(changes) < 1000:
                head = max(head, self.head)
                break
        return self.head >= head
