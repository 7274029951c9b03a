"""Keys and tasks as plain SQLAlchemy reads them: what the tests compare the store against.

The API reads keys and lists tasks through the hot reads (``omniflash.store.reads``),
on the event loop; these are the same reads from a test's thread, so that a test can
look at the tables without the API's fast path, and check that path against them.
"""

from __future__ import annotations

import sqlalchemy as sa

from omniflash.ids import hash_key
from omniflash.store import KeyInfo, Store, TaskRow
from omniflash.store.keys import ACTIVE_KEY_BY_HASH
from omniflash.store.schema import tasks, video_deletions

__all__ = ["key_of", "tasks_of", "videos_of"]


def key_of(store: Store, plaintext: str) -> KeyInfo | None:
    """The active key whose plaintext is ``plaintext``, or ``None``: the hot read's statement."""
    with store.db.read() as conn:
        row = conn.execute(ACTIVE_KEY_BY_HASH, {"key_hash": hash_key(plaintext)}).one_or_none()
    return None if row is None else KeyInfo.from_row(row)


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
