"""Preview frames of a running task: each one a ``preview`` event, under the lease.

The frame itself is a small image in blob storage (``previews/<task_id>/<n>.webp``,
stored first by the worker's source); the event names its blob key, never a URL: the
API signs one when it sends the event.  Only the lease's holder adds previews, exactly
as only it may heartbeat: a worker that lost its task adds nothing.
"""

from __future__ import annotations

import sqlalchemy as sa

from omniflash.store.db import retry_disconnect, retry_repeatable
from omniflash.store.events import record
from omniflash.store.queue import LeaseQueue
from omniflash.store.schema import task_events

__all__ = ["PREVIEWS_PREFIX", "LeasePreviews", "preview_key"]

PREVIEWS_PREFIX = "previews/"


def preview_key(task_id: str, index: int, ext: str = "webp") -> str:
    """The blob key of a task's ``index``-th preview frame."""
    return f"{PREVIEWS_PREFIX}{task_id}/{index}.{ext}"


class LeasePreviews(LeaseQueue):
    """The lease queue, and the preview frames its lease holders add."""

    @retry_disconnect
    def preview_count(self, task_id: str) -> int:
        """How many previews the task has: the next one's index (only the lease holder,
        one frame at a time, adds them)."""
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(
                        task_events.c.task_id == task_id, task_events.c.kind == "preview"
                    )
                ).scalar_one()
            )

    @retry_repeatable
    def add_preview(
        self,
        task_id: str,
        epoch: int,
        *,
        blob: str,
        width: int,
        height: int,
        worker_id: int | None = None,
    ) -> bool:
        """Record a stored preview frame as the task's next ``preview`` event; False (and
        nothing written) when the lease (``epoch``, and ``worker_id``'s token for a remote
        worker) is no longer held."""
        with self.db.write() as conn:
            row = self._lock_held(conn, task_id, epoch, worker_id)
            if row is None:
                return False
            index = conn.execute(
                sa.select(sa.func.count()).where(
                    task_events.c.task_id == task_id, task_events.c.kind == "preview"
                )
            ).scalar_one()
            record(
                conn,
                task_id=task_id,
                key_id=row._mapping["key_id"],
                kind="preview",
                data={
                    "blob": blob,
                    "index": int(index),
                    "width": width,
                    "height": height,
                    "progress": int(row._mapping["progress"]),
                },
            )
        return True
