"""What the OpenAI videos dialect keeps beside the task table: deleted videos, and listing.

``DELETE /v1/videos/{id}`` records the task here (and the task's files are removed); the
dialect then answers 404 for it and leaves it out of lists.  The task row itself stays:
its charge and ledger entries are history.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from omniflash.store.db import Database
from omniflash.store.schema import tasks, video_deletions
from omniflash.store.tasks import TaskRow

__all__ = ["VideoStore"]


class VideoStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def mark_deleted(self, task_id: str) -> bool:
        """Record the deletion; False when it was already recorded (by a concurrent DELETE)."""
        with self.db.write() as conn:
            # RETURNING, not rowcount: psycopg reports no count for ON CONFLICT DO NOTHING.
            inserted = conn.execute(
                self.db.insert_ignore(video_deletions)
                .values(task_id=task_id, deleted_at=time.time())
                .returning(video_deletions.c.task_id)
            ).first()
        return inserted is not None

    def is_deleted(self, task_id: str) -> bool:
        with self.db.read() as conn:
            return (
                conn.execute(
                    sa.select(video_deletions.c.task_id).where(video_deletions.c.task_id == task_id)
                ).scalar_one_or_none()
                is not None
            )

    def list_for_key(
        self, key_id: int, *, limit: int, after: str | None = None, order: str = "desc"
    ) -> list[TaskRow]:
        """The key's videos that are not deleted, by creation time; ``after``: the last seen."""
        deleted = sa.select(video_deletions.c.task_id)
        query = sa.select(tasks).where(tasks.c.key_id == key_id, tasks.c.id.not_in(deleted))
        # Task ids are ULIDs: they sort by creation time.
        if order == "asc":
            if after:
                query = query.where(tasks.c.id > after)
            query = query.order_by(tasks.c.id.asc())
        else:
            if after:
                query = query.where(tasks.c.id < after)
            query = query.order_by(tasks.c.id.desc())
        with self.db.read() as conn:
            return [TaskRow.from_row(r) for r in conn.execute(query.limit(limit)).all()]
