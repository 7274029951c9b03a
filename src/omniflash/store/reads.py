"""The API's hot reads, awaited on the event loop: a task, a page of a key's tasks, a key,
and the same task and page as the OpenAI videos dialect sees them (deleted videos apart).

Polls are most of an API's traffic, so these reads skip what the store's general
path costs per request: a hop to a worker thread and back, and SQLAlchemy's statement
and result machinery.  The statements are SQLAlchemy Core, like every query of the store,
compiled once per dialect to the driver's SQL text (``compiled``) and run by the driver
itself; their rows become the store's own ``TaskRow`` and ``KeyInfo``.

- SQLite (WAL mode): a reader never waits for a writer and a lookup by primary key or
  index costs microseconds, so the event loop runs the statement itself, on a read-only
  connection of its own thread.  In the rare case that SQLite answers "busy" (another
  process recovering the WAL), the read goes to a worker thread through the store,
  which waits as long as it takes, instead of stalling the loop.
- PostgreSQL: psycopg's asynchronous connections (autocommit, statements prepared by
  the server after a few uses) in a small pool per event loop; while one read waits for
  the server, the loop serves other requests.  A connection that fails is dropped and
  the read tried once more on a new one (a database restart costs no error); when the
  database is down the read raises ``StoreUnavailable`` (the API answers 503).  Polls
  (``task``) that arrive together share one statement (``store/polls.py``): a round trip costs
  the loop more than the rows, and under load many polls wait at once.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from omniflash.store.db import Database, StoreUnavailable
from omniflash.store.events import TaskEvent, event_statements
from omniflash.store.keys import ACTIVE_KEY_BY_HASH, KEY_FIELDS, KeyInfo
from omniflash.store.polls import Polls
from omniflash.store.schema import tasks, video_deletions
from omniflash.store.task_rows import TaskRow

__all__ = ["HotReads", "hot_reads"]

APPLICATION_NAME = "omniflash reads"
"""How these connections show in PostgreSQL's ``pg_stat_activity``."""

_TASK_NAMES = [
    "id",
    "key_id",
    "status",
    "progress",
    "spec",
    "seed",
    "credits",
    "estimated_time",
    "created_at",
    "started_at",
    "completed_at",
    "error",
    "result_key",
    "result_expires_at",
    "result_deleted",
    "attempts",
    "lease_epoch",
    "info",
]
_TASK_COLUMNS = [tasks.c[name] for name in _TASK_NAMES]


Params = dict[str, Any]
"""A statement's parameters, by the names of its ``bindparam``."""


def _statements() -> dict[str, sa.Select[Any]]:
    """The reads as SQLAlchemy Core statements (parameters named as ``bindparam``)."""
    deleted = sa.exists().where(video_deletions.c.task_id == tasks.c.id)
    key_id = tasks.c.key_id == sa.bindparam("key_id")
    limit = sa.bindparam("limit", type_=sa.Integer)
    after = sa.bindparam("after", type_=sa.String)
    mine = sa.select(*_TASK_COLUMNS).where(tasks.c.id == sa.bindparam("task_id"), key_id)
    # ``ix_tasks_key_id`` (key_id, id) serves both the filter and the order: task ids are
    # ULIDs, so they sort by creation time.
    page = sa.select(*_TASK_COLUMNS).where(key_id)
    videos = page.where(~deleted)
    return {
        "task": mine,
        "video": mine.add_columns(deleted.label("deleted")),
        "page": page.order_by(tasks.c.id.desc()).limit(limit),
        "page_after": page.where(tasks.c.id < after).order_by(tasks.c.id.desc()).limit(limit),
        "videos_desc": videos.order_by(tasks.c.id.desc()).limit(limit),
        "videos_desc_after": videos.where(tasks.c.id < after)
        .order_by(tasks.c.id.desc())
        .limit(limit),
        "videos_asc": videos.order_by(tasks.c.id.asc()).limit(limit),
        "videos_asc_after": videos.where(tasks.c.id > after)
        .order_by(tasks.c.id.asc())
        .limit(limit),
        "key": ACTIVE_KEY_BY_HASH,
        **event_statements(),
    }


STATEMENTS = _statements()
POSTGRES_STATEMENTS = {
    # The polls of one batch (``Polls``): the key of each row is checked in Python.
    "tasks": sa.select(*_TASK_COLUMNS).where(
        tasks.c.id == sa.any_(sa.bindparam("task_ids", type_=postgresql.ARRAY(sa.String)))
    ),
}


@functools.cache
def compiled(dialect_name: str) -> dict[str, tuple[str, Params]]:
    """The statements as the driver's SQL text, with named parameters, compiled once per
    dialect (``:name`` for sqlite3, ``%(name)s`` for psycopg), each with the values the
    compiler bound itself (SQLite's ``OFFSET 0`` after a bound ``LIMIT``)."""
    if dialect_name == "sqlite":
        from sqlalchemy.dialects import sqlite

        dialect: sa.Dialect = sqlite.dialect(paramstyle="named")
    else:
        from sqlalchemy.dialects.postgresql import psycopg

        dialect = psycopg.dialect(paramstyle="pyformat")  # type: ignore[no-untyped-call]
    statements = {}
    extra = POSTGRES_STATEMENTS if dialect_name == "postgresql" else {}
    for name, stmt in {**STATEMENTS, **extra}.items():
        done = stmt.compile(dialect=dialect)
        fixed = {k: v for k, v in done.params.items() if v is not None}
        statements[name] = (str(done), fixed)
    return statements


def _bound(
    statements: dict[str, tuple[str, Params]], name: str, params: Params
) -> tuple[str, Params]:
    """Statement ``name``'s text and its parameters, the compiler's own among them."""
    sql, fixed = statements[name]
    return sql, {**fixed, **params} if fixed else params


@functools.lru_cache(maxsize=4096)
def _task(row: tuple[Any, ...]) -> TaskRow:
    """A row as a ``TaskRow``, remembered by its whole content: a page of tasks is mostly
    rows that have not changed since the last look, and a changed row is another key."""
    return TaskRow.from_mapping(dict(zip(_TASK_NAMES, row, strict=True)))


def _key(row: Sequence[Any]) -> KeyInfo:
    return KeyInfo.from_mapping(dict(zip(KEY_FIELDS, row, strict=True)))


class HotReads(Protocol):
    async def task(self, task_id: str, key_id: int) -> TaskRow | None:
        """The key's task, or ``None`` (another key's task is simply not found)."""

    async def page(self, key_id: int, *, limit: int, after: str | None = None) -> list[TaskRow]:
        """The key's tasks, newest first; ``after`` is the last id of the previous page."""

    async def video(self, task_id: str, key_id: int) -> tuple[TaskRow, bool] | None:
        """The key's task and whether its owner deleted it as a video, or ``None``."""

    async def videos(
        self, key_id: int, *, limit: int, after: str | None = None, order: str = "desc"
    ) -> list[TaskRow]:
        """The key's tasks that are not deleted videos, by id (``asc`` or ``desc``)."""

    async def key(self, key_hash: str) -> KeyInfo | None:
        """The active key with this hash (``ids.hash_key``), or ``None``."""

    async def events(
        self, key_id: int, after: int, task_id: str | None = None, limit: int = 500
    ) -> list[TaskEvent]:
        """The key's task events after id ``after``, oldest first (one task's with ``task_id``)."""

    async def last_event_id(self, key_id: int, task_id: str) -> int:
        """The newest event id of the key's task ``task_id``; 0 when it has none."""

    async def last_key_event_id(self, key_id: int) -> int:
        """The newest event id of the key's tasks; 0 when they have none."""

    async def close(self) -> None:
        """Close this event loop's connections."""


def hot_reads(store_db: Database) -> HotReads:
    """The fastest ``HotReads`` for this database."""
    if store_db.is_sqlite:
        path = store_db.engine.url.database
        assert path, "a SQLite store is a file"
        return SqliteReads(path, ThreadReads(store_db))
    return PostgresReads(store_db)


class _Reads:
    """The reads, in terms of one ``_fetch`` (a statement's name and parameters: its rows)."""

    async def _fetch(self, name: str, params: Params) -> list[Any]:
        raise NotImplementedError

    async def task(self, task_id: str, key_id: int) -> TaskRow | None:
        rows = await self._fetch("task", {"task_id": task_id, "key_id": key_id})
        return _task(tuple(rows[0])) if rows else None

    async def page(self, key_id: int, *, limit: int, after: str | None = None) -> list[TaskRow]:
        name = "page_after" if after else "page"
        params = {"key_id": key_id, "after": after, "limit": limit}
        return [_task(tuple(r)) for r in await self._fetch(name, params)]

    async def video(self, task_id: str, key_id: int) -> tuple[TaskRow, bool] | None:
        rows = await self._fetch("video", {"task_id": task_id, "key_id": key_id})
        if not rows:
            return None
        *row, deleted = rows[0]
        return _task(tuple(row)), bool(deleted)

    async def videos(
        self, key_id: int, *, limit: int, after: str | None = None, order: str = "desc"
    ) -> list[TaskRow]:
        if order not in ("asc", "desc"):
            raise ValueError(f"order is asc or desc, not {order!r}")
        name = f"videos_{order}_after" if after else f"videos_{order}"
        params = {"key_id": key_id, "after": after, "limit": limit}
        return [_task(tuple(r)) for r in await self._fetch(name, params)]

    async def key(self, key_hash: str) -> KeyInfo | None:
        rows = await self._fetch("key", {"key_hash": key_hash})
        return _key(rows[0]) if rows else None

    async def events(
        self, key_id: int, after: int, task_id: str | None = None, limit: int = 500
    ) -> list[TaskEvent]:
        params: Params = {"key_id": key_id, "after": after, "limit": limit}
        if task_id is not None:
            params["task_id"] = task_id
        rows = await self._fetch("events" if task_id is None else "task_events", params)
        return [TaskEvent.from_row(tuple(r)) for r in rows]

    async def last_event_id(self, key_id: int, task_id: str) -> int:
        rows = await self._fetch("last_event", {"key_id": key_id, "task_id": task_id})
        return int(rows[0][0]) if rows else 0

    async def last_key_event_id(self, key_id: int) -> int:
        rows = await self._fetch("last_key_event", {"key_id": key_id})
        return int(rows[0][0]) if rows else 0

    async def close(self) -> None:
        return None


class ThreadReads(_Reads):
    """Through the store's SQLAlchemy engine, in a worker thread: works on any database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.sql = compiled(db.engine.dialect.name)

    def _run(self, name: str, params: Params) -> list[Any]:
        with self.db.read() as conn:
            return list(conn.exec_driver_sql(*_bound(self.sql, name, params)).all())

    async def _fetch(self, name: str, params: Params) -> list[Any]:
        return await anyio.to_thread.run_sync(self._run, name, params)


class SqliteReads(_Reads):
    """SQLite in WAL mode: the statement runs on the event loop's thread."""

    BUSY_TIMEOUT_S = 0.05

    def __init__(self, path: str, fallback: ThreadReads) -> None:
        self.path = path
        self.fallback = fallback
        self.sql = compiled("sqlite")
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True
            )
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
        return conn

    def _rows(self, name: str, params: Params) -> list[Any] | None:
        """The rows, or ``None`` when SQLite is busy and the read must wait in a thread."""
        try:
            return self._conn().execute(*_bound(self.sql, name, params)).fetchall()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return None
            raise

    async def _fetch(self, name: str, params: Params) -> list[Any]:
        rows = self._rows(name, params)
        if rows is None:
            return await self.fallback._fetch(name, params)
        return rows

    async def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class _Pool:
    """At most ``size`` psycopg async connections, opened on demand, for one event loop."""

    def __init__(self, conninfo: str, size: int, max_age_s: float) -> None:
        self.conninfo = conninfo
        self.max_age_s = max_age_s
        self.slots = asyncio.Semaphore(size)
        self.idle: list[tuple[float, Any]] = []  # (opened at, connection)

    async def run(self, sql: str, params: Params) -> list[Any]:
        import psycopg

        async with self.slots:
            for attempt in (1, 2):
                opened, conn = self.idle.pop() if self.idle else (0.0, None)
                try:
                    if conn is None:
                        opened = time.monotonic()
                        conn = await psycopg.AsyncConnection.connect(
                            self.conninfo, autocommit=True, application_name=APPLICATION_NAME
                        )
                    cur = await conn.execute(sql, params)
                    rows = await cur.fetchall()
                except psycopg.OperationalError as exc:
                    # A dropped connection (a restart, a network cut): the idle ones are
                    # likely gone too, so drop them all and try once on a new connection.
                    if conn is not None:
                        await conn.close()
                    await self.close()
                    if attempt == 2:
                        raise StoreUnavailable("The database cannot be reached just now") from exc
                    continue
                except BaseException:
                    # Anything else (a parameter the driver refuses, a cancelled request)
                    # may leave the connection mid-statement: close it, never pool it.
                    if conn is not None:
                        await conn.close()
                    raise
                if time.monotonic() - opened < self.max_age_s:
                    self.idle.append((opened, conn))
                else:
                    await conn.close()
                return rows
        raise AssertionError("unreachable")

    async def close(self) -> None:
        while self.idle:
            await self.idle.pop()[1].close()


class PostgresReads(_Reads):
    """PostgreSQL through psycopg's async connections, a small pool per event loop; polls
    batched (``Polls``)."""

    POOL_SIZE = 8
    MAX_AGE_S = 1800.0

    def __init__(self, db: Database) -> None:
        self.conninfo = db.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self.sql = compiled("postgresql")
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = (
            weakref.WeakKeyDictionary()
        )
        self._polls_of: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Polls] = (
            weakref.WeakKeyDictionary()
        )

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = _Pool(self.conninfo, self.POOL_SIZE, self.MAX_AGE_S)
        return pool

    def _polls(self) -> Polls:
        loop = asyncio.get_running_loop()
        polls = self._polls_of.get(loop)
        if polls is None:
            polls = self._polls_of[loop] = Polls(lambda: self._pool().run, self.sql["tasks"])
        return polls

    async def _fetch(self, name: str, params: Params) -> list[Any]:
        return await self._pool().run(*_bound(self.sql, name, params))

    async def task(self, task_id: str, key_id: int) -> TaskRow | None:
        row = await self._polls().row(task_id)
        # Another key's task is not found: the batch's statement reads by id alone.
        return _task(tuple(row)) if row is not None and row[1] == key_id else None

    async def close(self) -> None:
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()
