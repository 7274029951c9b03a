"""The per-process hub of the event streams: one source of news, many streams.

A stream subscribes for its key and waits on its own ``asyncio.Event``; the hub sets
the events of one key's streams when that key's tasks have new events, and every
stream then reads what is new itself (``HotReads.events`` after its last id).  The news
says only *which key*; the rows say *what*, so a wake-up that comes twice, or late,
never sends an event twice or loses one.

- PostgreSQL: ONE listening connection per process, shared with the workers' waker
  (``Listener``, a thread that parks on the socket, also on ``omniflash_events``); each
  ``NOTIFY``'s payload is a key id.  When the connection is (re)made every stream
  wakes and looks, since what was sent meanwhile is unknown.
- SQLite (one process): ``Database.event_hooks`` calls the hub after each commit that
  wrote events.

Both arrive on some other thread and are handed to the event loop with
``call_soon_threadsafe``: the streams themselves are coroutines, no thread each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from omniflash.store import EVENTS_CHANNEL, Store
from omniflash.worker.listener import ChannelListener

__all__ = ["EventHub", "Subscription"]

log = logging.getLogger(__name__)


class Subscription:
    """One stream's place in the hub: set when its key's tasks have news."""

    def __init__(self, hub: EventHub, key_id: int) -> None:
        self.hub = hub
        self.key_id = key_id
        self.news = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """Wait for news (True) or ``timeout`` seconds (False); the news is then taken."""
        try:
            await asyncio.wait_for(self.news.wait(), timeout)
        except TimeoutError:
            return False
        self.news.clear()
        return True

    def close(self) -> None:
        self.hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class EventHub:
    """This process's one source of event news, fanned out to its streams by key."""

    def __init__(self, store: Store, listener: ChannelListener | None = None) -> None:
        """With ``listener`` (PostgreSQL, not yet started), the hub's channel rides on
        that connection, the process's one; without, ``start`` opens its own."""
        self.store = store
        self._streams: dict[int, set[Subscription]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: ChannelListener | None = None
        self._shared = listener is not None and not store.db.is_sqlite
        if listener is not None and self._shared:
            listener.add(EVENTS_CHANNEL, self._notified)

    @property
    def streams(self) -> int:
        """How many streams are subscribed now."""
        return sum(len(s) for s in self._streams.values())

    def start(self) -> None:
        """Start listening; called on the event loop the streams run on."""
        self._loop = asyncio.get_running_loop()
        if self.store.db.is_sqlite:
            self.store.db.event_hooks.append(self._committed)
        elif not self._shared:
            self._listener = ChannelListener(
                self.store, EVENTS_CHANNEL, self._notified, name="event-listener"
            )
            self._listener.start()

    def close(self) -> None:
        if self._committed in self.store.db.event_hooks:
            self.store.db.event_hooks.remove(self._committed)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._loop = None

    def subscribe(self, key_id: int) -> Subscription:
        """A subscription for ``key_id``'s news; take it before the first read, so that
        nothing committed between the read and the wait goes unnoticed."""
        sub = Subscription(self, key_id)
        self._streams.setdefault(key_id, set()).add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._streams.get(sub.key_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._streams[sub.key_id]

    # From other threads: the listener's, or whichever thread committed (SQLite).

    def _notified(self, payload: str | None) -> None:
        if payload is None:
            self._to_loop(None)
            return
        try:
            key_id = int(payload)
        except ValueError:
            log.warning("an event notification with payload %r is not a key id", payload[:40])
            return
        self._to_loop({key_id})

    def _committed(self, key_ids: set[int]) -> None:
        self._to_loop(set(key_ids))

    def _to_loop(self, key_ids: set[int] | None) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while shutting down
            loop.call_soon_threadsafe(self.wake, key_ids)

    def wake(self, key_ids: set[int] | None) -> None:
        """On the loop: tell the streams of ``key_ids`` (every stream for ``None``)."""
        if key_ids is None:
            groups = list(self._streams.values())
        else:
            groups = [self._streams[k] for k in key_ids if k in self._streams]
        for subs in groups:
            for sub in subs:
                sub.news.set()
