"""The waker and the long polls' dispatcher: one signal wakes one waiter, first come first."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from omniflash.store import Store
from omniflash.worker.listener import Listener
from omniflash.worker.wake import Dispatcher, Waker

pytestmark = pytest.mark.timeout(30)


async def _waiters(d: Dispatcher, n: int, timeout: float = 5.0) -> list[asyncio.Task[bool]]:
    tasks = [asyncio.ensure_future(d.wait(timeout)) for _ in range(n)]
    await asyncio.sleep(0)  # all in line
    return tasks


def test_a_signal_wakes_one_waiter_in_the_order_they_came() -> None:
    async def run() -> None:
        d = Waker().dispatcher()
        tasks = await _waiters(d, 5)
        d.signal()
        await asyncio.sleep(0.01)
        assert [t.done() for t in tasks] == [True, False, False, False, False]
        d.signal()
        d.signal()
        await asyncio.sleep(0.01)
        assert [t.done() for t in tasks] == [True, True, True, False, False]
        assert d.waiting == 2 and d.woken == 3
        for t in tasks[3:]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert d.waiting == 0

    asyncio.run(run())


def test_a_waiter_that_times_out_leaves_the_line() -> None:
    async def run() -> None:
        d = Waker().dispatcher()
        assert await d.wait(0.01) is False
        assert d.waiting == 0
        d.signal()  # no one waits: the next poll claims instead
        assert d.maybe_pending()

    asyncio.run(run())


def test_a_woken_waiter_cancelled_before_it_runs_hands_the_wake_on() -> None:
    async def run() -> None:
        d = Waker().dispatcher()
        first, second = await _waiters(d, 2)
        d.signal()
        first.cancel()  # woken, then cancelled before it could claim
        await asyncio.gather(first, return_exceptions=True)
        assert await asyncio.wait_for(second, 1.0) is True

    asyncio.run(run())


def test_the_queue_is_known_empty_only_while_no_news_came() -> None:
    async def run() -> None:
        d = Waker().dispatcher()
        assert d.maybe_pending()  # nothing known at start: the first poll claims
        news = d.news
        d.found_empty(news)
        assert not d.maybe_pending()
        d.signal()
        assert d.maybe_pending()
        stale = d.news
        d.signal()  # news while a claim ran: its empty answer is out of date
        d.found_empty(stale)
        assert d.maybe_pending()

    asyncio.run(run())


def test_a_probe_is_due_once_an_interval_and_wakes_as_many_as_are_pending() -> None:
    async def run() -> None:
        d = Waker().dispatcher()
        d.found_empty(d.news)
        assert not d.probe_due(60.0)
        assert d.probe_due(0.0)
        tasks = await _waiters(d, 4)
        d.probed(0)
        assert not d.maybe_pending() and d.woken == 0
        d.probed(3)  # the prober claims one itself
        await asyncio.sleep(0.01)
        assert d.maybe_pending() and sum(t.done() for t in tasks) == 2
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


def test_a_listening_waker_dispatches_only_the_notifies_from_the_database() -> None:
    waker = Waker()
    waker.listening = True

    async def run() -> list[bool]:
        d = waker.dispatcher()
        tasks = await _waiters(d, 2, timeout=0.3)
        seen = waker.generation
        # A thread (an in-process submit) notifies: the threads wake, the polls do not,
        # since the same task's NOTIFY follows.
        await asyncio.to_thread(waker.notify)
        assert waker.wait(seen, 0.0)
        threading.Thread(target=waker.notify_remote).start()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(run()) == [True, False]


def test_a_signal_no_one_waited_for_is_kept_for_the_next_poll_until_found_stale() -> None:
    async def run() -> None:
        d = Waker().dispatcher()
        d.signal()
        d.signal()
        assert d.take_kept() and d.take_kept() and not d.take_kept()
        d.signal()
        d.found_empty(d.news)  # a claim since found nothing: the kept wake is stale
        assert not d.take_kept()

    asyncio.run(run())


def test_a_channel_is_added_to_the_listener_only_before_it_starts(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        listener = Listener(store, Waker())
        listener.add("omniflash_events", lambda _payload: None)
        assert list(listener.handlers) == ["omniflash_tasks", "omniflash_events"]
    finally:
        store.close()
