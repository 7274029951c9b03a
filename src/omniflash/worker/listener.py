"""PostgreSQL: ``Listener`` turns ``NOTIFY`` from any process into this process's ``Waker``."""

from __future__ import annotations

import contextlib
import threading

from omniflash.store import NOTIFY_CHANNEL, Store
from omniflash.worker.wake import Waker

__all__ = ["Listener"]


class Listener(threading.Thread):
    """PostgreSQL: wake this process's waiters on every task queued anywhere."""

    def __init__(self, store: Store, waker: Waker) -> None:
        super().__init__(name="listener", daemon=True)
        self.store = store
        self.waker = waker
        self.stop_event = threading.Event()

    def run(self) -> None:
        self.store.db.listen(NOTIFY_CHANNEL, self.waker.notify, self.stop_event)

    def close(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        with contextlib.suppress(RuntimeError):
            self.join(timeout)
