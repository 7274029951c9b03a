"""The hub wakes only the streams of the key whose tasks have news; on PostgreSQL the news
comes from any process's commit through the one listening connection; a stream counts
once against the read limit, its keep-alives never."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from omniflash.store import Store
from omniflash.store.events import record
from tests.conftest import running_server
from tests.events.sse import events_of
from tests.store.test_store import submit


async def _woken(store: Store, write: object) -> tuple[bool, bool, bool]:
    from omniflash.api.events.hub import EventHub

    hub = EventHub(store)
    hub.start()
    try:
        mine, also_mine, theirs = hub.subscribe(1), hub.subscribe(1), hub.subscribe(2)
        await asyncio.sleep(0.5 if not store.db.is_sqlite else 0)  # PostgreSQL: LISTEN first
        for sub in (mine, also_mine, theirs):  # the listener's first look wakes everyone
            sub.news.clear()
        await asyncio.to_thread(write)  # type: ignore[arg-type]
        got = await mine.wait(30), await also_mine.wait(0.2), await theirs.wait(0.2)
        mine.close()
        also_mine.close()
        theirs.close()
        assert hub.streams == 0
        return got
    finally:
        hub.close()


def test_news_wakes_only_that_keys_streams(store: Store) -> None:
    _, first = store.keys.create("first", 10**9, 1000, 100)
    _, second = store.keys.create("second", 10**9, 1000, 100)
    assert (first.id, second.id) == (1, 2)
    task = submit(store, first)

    def write() -> None:
        # As any process would: an event of key 1, committed (from another connection).
        other = Store(store.db.url, migrate=False)
        try:
            with other.db.write() as conn:
                record(conn, task_id=task.id, key_id=first.id, kind="progress", data={})
        finally:
            other.close()
        if store.db.is_sqlite:  # one process on SQLite: this store's commit hook tells
            with store.db.write() as conn:
                record(conn, task_id=task.id, key_id=first.id, kind="progress", data={})

    assert asyncio.run(_woken(store, write)) == (True, True, False)
    store.tasks.cancel(task.id, first.id)


def test_a_stream_counts_once_against_the_read_limit(tmp_path: Path) -> None:
    env = {"OMNIFLASH_READ_RPM": "3", "OMNIFLASH_EVENTS_KEEPALIVE_S": "0.2"}
    with running_server(tmp_path, "--workers", "0", **env) as server, server.client() as client:
        with client.stream("GET", "/v1/events") as response:
            assert response.status_code == 200
            events = events_of(response)
            for _ in range(3):
                assert next(events).kind == "comment"  # keep-alives: not reads
            assert client.get("/v1/tasks").status_code == 200
            assert client.get("/v1/tasks").status_code == 200
            refused = client.get("/v1/events")
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
        with httpx.Client(base_url=server.url) as anonymous:
            assert anonymous.get("/v1/events").status_code == 401
