"""What the orphan sweep asks the task table before it deletes a file.

``omniflash.worker.sweep`` lists files by age; these queries say which of them a task
still owns, so that a live task's result or inputs are never deleted.  Both are cheap:
results by primary key, inputs by a range of task ids (ULIDs sort by time).
"""

from __future__ import annotations

import sqlalchemy as sa

from omniflash.ids import ulid_floor
from omniflash.store.db import Database, retry_disconnect
from omniflash.store.schema import tasks
from omniflash.store.task_rows import TaskStatus

__all__ = ["FileStore"]


class FileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @retry_disconnect
    def results_in_use(self, keys: list[str]) -> set[str]:
        """Which of the per-attempt result keys (``results/{task}.{epoch}.mp4``) are a task's
        result, or its current attempt's upload about to be completed: the sweep keeps those."""
        parsed: dict[str, tuple[str, int]] = {}
        for key in keys:
            name = key.removeprefix("results/").removesuffix(".mp4")
            task_id, _, number = name.rpartition(".")
            if task_id and number.isdigit():
                parsed[key] = (task_id, int(number))
        if not parsed:
            return set()
        with self.db.read() as conn:
            rows = {
                r.id: r
                for r in conn.execute(
                    sa.select(
                        tasks.c.id,
                        tasks.c.status,
                        tasks.c.lease_epoch,
                        tasks.c.result_key,
                        tasks.c.result_deleted,
                    ).where(tasks.c.id.in_({t for t, _ in parsed.values()}))
                )
            }
        used = set()
        for key, (task_id, epoch) in parsed.items():
            r = rows.get(task_id)
            if r is None:
                continue
            live = r.status == TaskStatus.PROCESSING.value and r.lease_epoch == epoch
            if live or (r.result_key == key and not r.result_deleted):
                used.add(key)
        return used

    @retry_disconnect
    def tasks_with_files(self, task_ids: list[str]) -> set[str]:
        """Which of ``task_ids`` are tasks whose files are not yet deleted."""
        found: set[str] = set()
        with self.db.read() as conn:
            for start in range(0, len(task_ids), 500):
                found.update(
                    conn.execute(
                        sa.select(tasks.c.id).where(
                            tasks.c.id.in_(task_ids[start : start + 500]),
                            tasks.c.result_deleted.is_(False),
                        )
                    ).scalars()
                )
        return found

    @retry_disconnect
    def inputs_in_use(self, prefix: str, made_at: float, window_s: float) -> bool:
        """Whether a task whose files are not yet deleted names a blob under ``prefix``
        (``inputs/<ulid>``, written at ``made_at``).  Its task was submitted within
        ``window_s`` after that, so only ids (ULIDs, by time) of that span are searched."""
        low, high = "task_" + ulid_floor(made_at - 60), "task_" + ulid_floor(made_at + window_s)
        with self.db.read() as conn:
            found = conn.execute(
                sa.select(tasks.c.id)
                .where(
                    tasks.c.id >= low,
                    tasks.c.id < high,
                    tasks.c.result_deleted.is_(False),
                    tasks.c.spec.contains(f"blob:{prefix}/", autoescape=True),
                )
                .limit(1)
            ).first()
        return found is not None
