"""A read whose parameter PostgreSQL's driver refuses (NUL in text) closes its connection.

The routes refuse such ids before any SQL (``omniflash.text``); this is the second line:
a statement that fails for any reason but a lost connection must not leave that
connection open outside the pool (closed by the garbage collector, mid-statement).
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
import sqlalchemy as sa

from omniflash.store import Store
from omniflash.store.reads import PostgresReads

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


def test_a_refused_parameter_closes_the_connection_and_the_pool_reads_on(
    postgres_url: str,
) -> None:
    store = Store(postgres_url)
    try:
        # Other tests of this session may hold read connections of their own.
        before = _open_reads(store)
        _token, key = store.keys.create("nul", 1000, rpm=10, max_concurrent=1)
        reads = PostgresReads(store.db)

        async def main() -> None:
            assert await reads.task("task_01JH0000000000000000000000", key.id) is None
            pool = reads._pool()
            for _ in range(20):
                with pytest.raises(psycopg.DataError, match="NUL"):
                    await reads.task("task_\x00", key.id)
                with pytest.raises(psycopg.DataError, match="NUL"):
                    await reads.page(key.id, limit=5, after="\x00")
            # every failed connection was closed, none was pooled or leaked
            assert all(not conn.closed for _opened, conn in pool.idle)
            assert len(pool.idle) <= 1
            assert await reads.page(key.id, limit=5) == []
            await reads.close()

        asyncio.run(main())
        # A closed connection's server process may take a moment to leave pg_stat_activity.
        deadline = time.monotonic() + 5
        while _open_reads(store) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _open_reads(store) <= before
    finally:
        store.close()


def _open_reads(store: Store) -> int:
    with store.db.read() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'omniflash reads'"
                )
            ).scalar_one()
        )
