"""Waking idle workers when a task is queued, without a sleep loop.

A ``Waker`` counts "something was queued" events.  Whoever finds the queue empty reads
``generation`` first, then waits for it to move, so a notify that lands between the empty
claim and the wait is never missed.  In-process submits call ``notify()`` directly; on
PostgreSQL a listener thread turns every ``NOTIFY`` from any process into ``notify()``
here, so remote workers long-polling this replica and local workers wake within a
round trip of a submit anywhere in the fleet.

>>> waker = Waker()
>>> seen = waker.generation
>>> waker.notify()
>>> waker.wait(seen, timeout=0.0)
True
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["Waker"]


class Waker:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._loops: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            loops = list(self._loops.items())
        for loop, event in loops:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed
                with self._cond:
                    self._loops.pop(loop, None)

    def wait(self, seen: int, timeout: float) -> bool:
        """Block until a notify after ``seen`` or ``timeout``; True when notified."""
        with self._cond:
            return self._cond.wait_for(lambda: self._generation != seen, timeout)

    async def wait_async(self, seen: int, timeout: float) -> bool:
        """``wait`` for coroutines: parks no thread while waiting."""
        loop = asyncio.get_running_loop()
        with self._cond:
            event = self._loops.get(loop)
            if event is None:
                event = self._loops[loop] = asyncio.Event()
        deadline = loop.time() + timeout
        while self._generation == seen:
            event.clear()
            left = deadline - loop.time()
            if self._generation != seen or left <= 0:
                break
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                break
        return self._generation != seen
