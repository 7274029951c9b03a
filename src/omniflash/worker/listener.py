"""PostgreSQL: ``Listener`` turns ``NOTIFY`` from any process into this process's ``Waker``;
``ChannelListener`` hands each ``NOTIFY``'s payload of a channel to a callback."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from omniflash.store import NOTIFY_CHANNEL, Store
from omniflash.worker.wake import Waker

__all__ = ["ChannelListener", "Listener"]


class ChannelListener(threading.Thread):
    """PostgreSQL: one listening connection on ``channel``; ``on_payload`` gets each
    payload, and ``None`` whenever the connection is (re)made (look at everything)."""

    def __init__(
        self, store: Store, channel: str, on_payload: Callable[[str | None], None], name: str
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.store = store
        self.channel = channel
        self.on_payload = on_payload
        self.stop_event = threading.Event()

    def run(self) -> None:
        self.store.db.listen_payloads(self.channel, self.on_payload, self.stop_event)

    def close(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        with contextlib.suppress(RuntimeError):
            self.join(timeout)


class Listener(ChannelListener):
    """PostgreSQL: wake this process's waiters on every task queued anywhere."""

    def __init__(self, store: Store, waker: Waker) -> None:
        super().__init__(store, NOTIFY_CHANNEL, lambda _payload: waker.notify_remote(), "listener")
        self.waker = waker
        # Every task queued, here too, arrives as a NOTIFY: the long polls take only those.
        waker.listening = True
