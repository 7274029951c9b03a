"""What the OpenAI videos dialect keeps beside the task table: deleted videos.

``DELETE /v1/videos/{id}`` records the task here (and the task's files are removed); the
dialect then answers 404 for it and leaves it out of lists (``store.reads``).  The task
row itself stays: its charge and ledger entries are history.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from omniflash.store.db import Database
from omniflash.store.schema import video_deletions

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
