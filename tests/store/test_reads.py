"""The API's hot reads (store/reads.py) against the store's own reads, on both databases."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from omniflash.contract import parse_generation_request
from omniflash.ids import hash_key
from omniflash.store import Store, StoreUnavailable, TaskStatus
from omniflash.store.reads import HotReads, PostgresReads, SqliteReads, ThreadReads, hot_reads
from omniflash.store.videos import VideoStore
from tests.plain_reads import key_of, tasks_of, videos_of

SPEC = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a harbour", "duration": 4})


def _implementations(store: Store) -> list[HotReads]:
    return [hot_reads(store.db), ThreadReads(store.db)]


def test_the_fast_implementation_is_chosen_per_database(store: Store) -> None:
    expected = SqliteReads if store.db.is_sqlite else PostgresReads
    assert isinstance(hot_reads(store.db), expected)


def test_hot_reads_answer_what_the_store_answers(store: Store) -> None:
    token, key = store.keys.create("reads", 100_000, rpm=1000, max_concurrent=100)
    other_token, other = store.keys.create("other", 100_000, rpm=1000, max_concurrent=100)
    ids = []
    for i in range(7):
        submitted = store.tasks.submit(key, SPEC, millicredits=1000, estimated_time=3, seed=i)
        ids.append(submitted.task.id)
    store.tasks.submit(other, SPEC, millicredits=1000, estimated_time=3, seed=99)
    store.tasks.cancel(ids[2], key.id)
    # A completed task, with a result and its JSON info, read back through every path.
    claim = store.tasks.claim("w1", lease_s=30)
    assert claim is not None
    store.tasks.complete(
        claim.task.id, claim.epoch, result_key="results/x.mp4", ttl_s=60, info={"frames": 96}
    )
    store.keys.revoke(other_token)
    videos = VideoStore(store.db)
    videos.mark_deleted(ids[3])

    async def check(reads: HotReads) -> None:
        for task_id in ids:
            assert await reads.task(task_id, key.id) == store.tasks.get(task_id, key.id)
        assert await reads.task(ids[0], other.id) is None  # another key's task is not found
        assert await reads.task("task_nope", key.id) is None
        statuses = {t.status for t in await reads.page(key.id, limit=100)}
        assert statuses == {TaskStatus.PENDING, TaskStatus.COMPLETED, TaskStatus.CANCELLED}
        for limit, after in [(100, None), (3, None), (3, ids[4]), (2, ids[1]), (5, ids[0])]:
            got = await reads.page(key.id, limit=limit, after=after)
            assert got == tasks_of(store, key.id, limit=limit, after=after)
        assert [t.id for t in await reads.page(key.id, limit=100)] == ids[::-1]
        # The OpenAI dialect's view: the same tasks, less the deleted video.
        assert await reads.video(ids[0], key.id) == (store.tasks.get(ids[0]), False)
        assert await reads.video(ids[3], key.id) == (store.tasks.get(ids[3]), True)
        assert await reads.video(ids[0], other.id) is None
        for order in ("asc", "desc"):
            for limit, after in [(100, None), (2, None), (2, ids[1]), (3, ids[5])]:
                got = await reads.videos(key.id, limit=limit, after=after, order=order)
                assert got == videos_of(store, key.id, limit=limit, after=after, order=order)
                assert ids[3] not in [t.id for t in got]
        assert len(await reads.videos(key.id, limit=100)) == len(ids) - 1
        assert await reads.key(hash_key(token)) == key_of(store, token)
        assert await reads.key(hash_key(other_token)) is None  # revoked
        assert await reads.key(hash_key("of_nothing")) is None
        await reads.close()

    for reads in _implementations(store):
        asyncio.run(check(reads))


def test_a_busy_sqlite_read_waits_in_a_thread_not_on_the_event_loop(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'busy.db'}")
    _, key = store.keys.create("busy", 10_000, rpm=100, max_concurrent=10)
    task_id = store.tasks.submit(key, SPEC, millicredits=1000, estimated_time=3, seed=1).task.id
    reads = hot_reads(store.db)
    assert isinstance(reads, SqliteReads)
    # Another connection takes the database for itself (once the store's pooled connections
    # are closed, as exclusive locking in WAL mode requires): every other reader gets "busy".
    store.db.engine.dispose()
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None, check_same_thread=False)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("UPDATE tasks SET progress = 42")

    def release() -> None:
        time.sleep(0.5)
        holder.execute("COMMIT")
        holder.close()

    async def main() -> tuple[object, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        threading.Thread(target=release).start()
        task = await reads.task(task_id, key.id)
        ticker.cancel()
        await reads.close()
        return task, ticks

    try:
        task, ticks = asyncio.run(main())
        assert task is not None and task.progress == 42  # read after the lock was released
        assert ticks >= 10  # the loop went on serving while the read waited
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_reads_survive_dropped_connections_and_report_a_dead_server(
    postgres_url: str,
) -> None:
    store = Store(postgres_url)
    try:
        token, key = store.keys.create("drop", 10_000, rpm=100, max_concurrent=10)
        reads = hot_reads(store.db)
        assert isinstance(reads, PostgresReads)

        async def main() -> None:
            # Fill the pool, then have the server drop every one of its connections.
            await asyncio.gather(*(reads.key(hash_key(token)) for _ in range(reads.POOL_SIZE)))
            with store.db.write() as conn:
                dropped = conn.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND application_name = 'omniflash reads'"
                    )
                ).scalar_one()
            assert dropped >= 1
            for _ in range(reads.POOL_SIZE + 1):  # each dead connection is replaced once
                found = await reads.key(hash_key(token))
                assert found is not None and found.id == key.id
            await reads.close()

        asyncio.run(main())

        nowhere = PostgresReads(store.db)
        nowhere.conninfo = "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"

        async def down() -> None:
            with pytest.raises(StoreUnavailable):
                await nowhere.task("task_x", key.id)

        asyncio.run(down())
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_polls_that_arrive_together_share_a_statement_and_keep_to_their_keys(
    pg: Store,
) -> None:
    import psycopg

    _, key = pg.keys.create("batch", 100_000, rpm=1000, max_concurrent=100)
    _, other = pg.keys.create("batch other", 100_000, rpm=1000, max_concurrent=100)
    mine = [
        pg.tasks.submit(key, SPEC, millicredits=1000, estimated_time=3, seed=i) for i in range(5)
    ]
    theirs = pg.tasks.submit(other, SPEC, millicredits=1000, estimated_time=3, seed=9).task
    reads = hot_reads(pg.db)
    assert isinstance(reads, PostgresReads)
    statements = []
    run = reads._pool

    def counting_pool() -> Any:
        pool = run()
        inner = pool.run

        async def counted(sql: str, params: dict[str, Any]) -> list[Any]:
            statements.append(params)
            return await inner(sql, params)

        pool.run = counted  # type: ignore[method-assign]
        return pool

    reads._pool = counting_pool  # type: ignore[method-assign]

    async def main() -> list[Any]:
        polls = [reads.task(s.task.id, key.id) for s in mine]
        polls += [
            reads.task(mine[0].task.id, key.id),  # the same task twice in one batch
            reads.task(theirs.id, key.id),  # another key's task: not found
            reads.task(theirs.id, other.id),
            reads.task("task_nope", key.id),
        ]
        found = await asyncio.gather(*polls)
        # A poll the driver refuses fails alone; the others of its batch are answered.
        refused = await asyncio.gather(
            reads.task("task_\x00", key.id),
            reads.task(mine[1].task.id, key.id),
            return_exceptions=True,
        )
        await reads.close()
        return [*found, *refused]

    got = asyncio.run(main())
    assert got[:5] == [pg.tasks.get(s.task.id, key.id) for s in mine]
    assert got[5] == got[0]
    assert got[6] is None and got[7] == pg.tasks.get(theirs.id, other.id) and got[8] is None
    assert isinstance(got[9], psycopg.DataError)
    assert got[10] == got[1]
    assert len(statements[0]["task_ids"]) == 7  # the first nine polls: one statement
