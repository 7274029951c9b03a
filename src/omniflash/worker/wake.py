"""Waking idle workers when a task is queued, without a sleep loop.

A ``Waker`` counts "something was queued" events.  Threads (the in-process workers) read
``generation`` first, then ``wait`` for it to move, so a notify that lands between an
empty claim and the wait is never missed.  In-process submits call ``notify()``
directly; on PostgreSQL a listener thread turns every ``NOTIFY`` from any process into
``notify_remote()`` here, so workers here wake within a round trip of a submit anywhere.

The remote workers' long polls wait in a ``Dispatcher`` instead (one per event loop):
FIFO, and each notify wakes ONE of them, not all.  Every path that makes a task pending
sends one ``NOTIFY`` per transaction, so on PostgreSQL the dispatcher takes its news
from the listener alone (a local ``notify()`` would only repeat it).

>>> waker = Waker()
>>> seen = waker.generation
>>> waker.notify()
>>> waker.wait(seen, timeout=0.0)
True
"""

from __future__ import annotations

import asyncio
import threading
import time

__all__ = ["Dispatcher", "Waker"]


class Waker:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._dispatchers: dict[asyncio.AbstractEventLoop, Dispatcher] = {}
        self.listening = False
        """True once a ``Listener`` feeds this waker every ``NOTIFY`` (PostgreSQL)."""

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        """A task was queued (or handed back) by this process."""
        self._notify(dispatch=not self.listening)

    def notify_remote(self) -> None:
        """A ``NOTIFY``: a task was queued by some process, this one included."""
        self._notify(dispatch=True)

    def _notify(self, *, dispatch: bool) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            dispatchers = list(self._dispatchers.items()) if dispatch else []
        for loop, dispatcher in dispatchers:
            try:
                loop.call_soon_threadsafe(dispatcher.signal)
            except RuntimeError:  # that loop has closed
                with self._cond:
                    self._dispatchers.pop(loop, None)

    def wait(self, seen: int, timeout: float) -> bool:
        """Block until a notify after ``seen`` or ``timeout``; True when notified."""
        with self._cond:
            return self._cond.wait_for(lambda: self._generation != seen, timeout)

    def dispatcher(self) -> Dispatcher:
        """The running event loop's dispatcher (made on first use)."""
        loop = asyncio.get_running_loop()
        with self._cond:
            found = self._dispatchers.get(loop)
            if found is None:
                found = self._dispatchers[loop] = Dispatcher(loop)
            return found


class Dispatcher:
    """One event loop's waiting long polls, first come first woken, one per signal.

    The dispatcher also remembers whether the queue is known to be empty: a claim that
    found nothing, with no signal since it began, says so, and a long poll that arrives
    then waits without a claim.  A signal ends that knowledge and wakes the next waiter
    (a claim that takes a task wakes no one: each task queued is its own signal).  News
    that never comes as a signal (SQLite across processes, a listener reconnecting) is
    found by a probe: one waiter at a time counts the pending tasks, at most once an
    interval, so the cost is one cheap read per interval per process, whatever the
    number of waiters (``probe_due``, ``probed``).

    >>> async def demo() -> list[bool]:
    ...     d = Waker().dispatcher()
    ...     first = asyncio.ensure_future(d.wait(1.0))
    ...     second = asyncio.ensure_future(d.wait(0.01))
    ...     await asyncio.sleep(0)
    ...     d.signal()
    ...     return [await first, await second]
    >>> asyncio.run(demo())
    [True, False]
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: dict[asyncio.Future[bool], None] = {}  # insertion order: FIFO
        self.news = 0
        """Signals and probes that found tasks, counted; a claim notes it before it runs."""
        self._empty_at: int | None = None
        self._kept = 0
        self._probed_at = time.monotonic()
        self.woken = 0
        """How many waiters a signal or probe has woken (for tests and benches)."""

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def maybe_pending(self) -> bool:
        """False while a claim found the queue empty and no news came since."""
        return self._empty_at != self.news

    def found_empty(self, news: int) -> None:
        """A claim that began at ``news`` found nothing: wakes kept for later are stale."""
        if news == self.news:
            self._empty_at = news
            self._kept = 0

    def take_kept(self) -> bool:
        """True (once) for a signal that came while no one waited in line: a poll that is
        between waits (probing, or just come) claims for it."""
        if self._kept <= 0:
            return False
        self._kept -= 1
        return True

    def signal(self) -> None:
        """A task was queued somewhere: wake one waiter (or the next long poll claims)."""
        self.news += 1
        if not self._wake_one():
            self._kept += 1

    def probe_due(self, interval: float) -> bool:
        """True for one caller per ``interval``, when no claim is known to be on its way."""
        now = time.monotonic()
        if now - self._probed_at < interval:
            return False
        self._probed_at = now
        return True

    def probed(self, pending: int) -> None:
        """A probe found ``pending`` tasks: the prober claims, and wakes as many more."""
        if pending <= 0:
            return
        self.news += 1
        for _ in range(pending - 1):
            if not self._wake_one():
                break

    def _wake_one(self) -> bool:
        while self._waiters:
            waiter = next(iter(self._waiters))
            del self._waiters[waiter]
            if not waiter.done():
                waiter.set_result(True)
                self.woken += 1
                return True
        return False

    async def wait(self, timeout: float) -> bool:
        """Wait in line until woken (True) or ``timeout`` (False).  A waiter cancelled
        after it was woken hands the wake to the next one."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiters[waiter] = None
        timer = self._loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._wake_one()
            raise
        finally:
            timer.cancel()
            self._waiters.pop(waiter, None)

    def hand_on(self) -> None:
        """A woken waiter leaves without claiming: the next one takes its place."""
        self._wake_one()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
