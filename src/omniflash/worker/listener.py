"""PostgreSQL: ONE listening connection per process.  ``Listener`` turns ``NOTIFY`` from
any process into this process's ``Waker``, and carries the other channels a process
listens on (the live events' hub adds its own with ``add``) on the same connection."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from omniflash.store import NOTIFY_CHANNEL, Store
from omniflash.worker.wake import Waker

__all__ = ["ChannelListener", "Listener"]


class ChannelListener(threading.Thread):
    """PostgreSQL: one listening connection on ``channel`` (and any ``add``-ed before
    ``start``); each handler gets its channel's payloads, and ``None`` whenever the
    connection is (re)made (look at everything)."""

    def __init__(
        self, store: Store, channel: str, on_payload: Callable[[str | None], None], name: str
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.store = store
        self.channel = channel
        self.handlers: dict[str, Callable[[str | None], None]] = {channel: on_payload}
        self.stop_event = threading.Event()

    def add(self, channel: str, on_payload: Callable[[str | None], None]) -> None:
        """Listen on ``channel`` too, on the same connection; only before ``start``."""
        if self.is_alive():
            raise RuntimeError("a channel is added before the listener starts")
        self.handlers[channel] = on_payload

    def run(self) -> None:
        self.store.db.listen_channels(self.handlers, self.stop_event)

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
