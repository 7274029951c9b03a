"""A key's tasks as plain SQLAlchemy reads them: what the tests compare the store against.

The API lists tasks through the hot reads (``omniflash.store.reads``); these are the
same lists written the obvious way, so that a test can look at the table without the
API's fast path, and check that path against them.
"""

from __future__ import annotations

import sqlalchemy as sa

from omniflash.store import Store, TaskRow
from omniflash.store.schema import tasks, video_deletions

__all__ = ["tasks_of", "videos_of"]


def tasks_of(
    store: Store, key_id: int, *, limit: int = 20, after: str | None = None
) -> list[TaskRow]:
    """The key's tasks, newest first; ``after`` is the last id of the previous page."""
    query = sa.select(tasks).where(tasks.c.key_id == key_id)
    if after:
        # Task ids are ULIDs: they sort by creation time.
        query = query.where(tasks.c.id < after)
    query = query.order_by(tasks.c.id.desc()).limit(limit)
    with store.db.read() as conn:
        return [TaskRow.from_row(r) for r in conn.execute(query).all()]


def videos_of(
    store: Store, key_id: int, *, limit: int, after: str | None = None, order: str = "desc"
) -> list[TaskRow]:
    """The key's videos that are not deleted, by creation time; ``after``: the last seen."""
    deleted = sa.select(video_deletions.c.task_id)
    query = sa.select(tasks).where(tasks.c.key_id == key_id, tasks.c.id.not_in(deleted))
    if order == "asc":
        if after:
            query = query.where(tasks.c.id > after)
        query = query.order_by(tasks.c.id.asc())
    else:
        if after:
            query = query.where(tasks.c.id < after)
        query = query.order_by(tasks.c.id.desc())
    with store.db.read() as conn:
        return [TaskRow.from_row(r) for r in conn.execute(query.limit(limit)).all()]
