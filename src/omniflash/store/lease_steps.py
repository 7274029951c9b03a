"""SQLite's forms of the lease queue's writes, a statement at a time under ``BEGIN
IMMEDIATE`` (which serialises every writer); PostgreSQL runs each as one statement
(``store.lease_statements``).  What they write, and the rows they must match, are the
same: ``store.queue`` says what each guarantees.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from omniflash.errors import AuthenticationFailed
from omniflash.store.events import record
from omniflash.store.lease_statements import claim_values
from omniflash.store.schema import tasks, worker_tokens
from omniflash.store.task_ends import TaskEnds
from omniflash.store.task_rows import TaskStatus

__all__ = ["LeaseSteps"]


class LeaseSteps(TaskEnds):
    """The lease, held or taken: the queue's shared conditions and its SQLite steps."""

    @staticmethod
    def _held(task_id: str, epoch: int, worker_id: int | None = None) -> sa.ColumnElement[bool]:
        """The task under this lease; with ``worker_id``, only while that token holds it."""
        held = sa.and_(
            tasks.c.id == task_id,
            tasks.c.status == TaskStatus.PROCESSING.value,
            tasks.c.lease_epoch == epoch,
        )
        return held if worker_id is None else sa.and_(held, tasks.c.lease_worker == worker_id)

    def _lock_held(
        self, conn: sa.Connection, task_id: str, epoch: int, worker_id: int | None = None
    ) -> sa.Row[Any] | None:
        return conn.execute(
            self.db.for_update(sa.select(tasks).where(self._held(task_id, epoch, worker_id)))
        ).one_or_none()

    # The worker's writes run again, once, on a fresh connection when the database dropped
    # the first, even during its commit (``retry_repeatable``): each is safe to repeat, as
    # its outcome is in the row it matches.  A repeated heartbeat renews again; a repeated
    # complete, fail or release whose first try committed finds the lease gone and answers
    # False, and the caller reads the task to learn what happened
    # (``ResultIntake.record``).

    def _check_token(self, conn: sa.Connection, worker_id: int) -> None:
        live = sa.select(worker_tokens.c.id).where(
            worker_tokens.c.id == worker_id, worker_tokens.c.revoked_at.is_(None)
        )
        if not self.db.is_sqlite:
            live = live.with_for_update(read=True)
        if conn.execute(live).one_or_none() is None:
            raise AuthenticationFailed(
                "Authentication failed: this worker token is unknown or revoked"
            )

    def _claim_in_steps(
        self, owner: str, lease_s: float, now: float | None, worker_id: int | None
    ) -> sa.Row[Any] | None:
        """SQLite: the claim a statement at a time, under ``BEGIN IMMEDIATE``."""
        clock = self._clock(now)
        pending = tasks.c.status == TaskStatus.PENDING.value
        oldest = (
            sa.select(tasks.c.id)
            .where(pending)
            .order_by(tasks.c.created_at, tasks.c.id)
            .limit(1)
            .scalar_subquery()
        )
        # The subquery picks the oldest pending row (SQLite's write lock serialises claims).
        with self.db.write() as conn:
            if worker_id is not None:
                self._check_token(conn, worker_id)
            found = conn.execute(
                tasks.update()
                .where(tasks.c.id == oldest, pending)
                .values(claim_values(TaskStatus.PROCESSING.value, owner, worker_id, clock, lease_s))
                .returning(*tasks.c)
            ).one_or_none()
            if found is not None:
                record(
                    conn,
                    task_id=found.id,
                    key_id=found.key_id,
                    kind="status",
                    data={"status": TaskStatus.PROCESSING.value, "progress": found.progress},
                )
        return found

    def _heartbeat_in_steps(
        self,
        task_id: str,
        epoch: int,
        progress: int,
        lease_s: float,
        now: float | None,
        worker_id: int | None,
        max_run_s: float | None,
    ) -> bool:
        """SQLite: ``heartbeat`` a statement at a time, under ``BEGIN IMMEDIATE``."""
        held = self._held(task_id, epoch, worker_id)
        if max_run_s is not None:
            held = sa.and_(held, tasks.c.claimed_at + max_run_s > self._clock(now))
        renew = tasks.update().values(lease_expires_at=self._clock(now) + lease_s)
        with self.db.write() as conn:
            # Progress that rises is news: the update that records it returns what its
            # event needs, in the same transaction.  Otherwise the lease is only renewed.
            rose = conn.execute(
                renew.where(held, tasks.c.progress < progress)
                .values(progress=progress)
                .returning(
                    tasks.c.key_id,
                    (self._clock(now) - tasks.c.claimed_at).label("elapsed"),
                )
            ).one_or_none()
            if rose is not None:
                record(
                    conn,
                    task_id=task_id,
                    key_id=rose.key_id,
                    kind="progress",
                    data={"progress": progress, "eta_s": _eta(progress, rose.elapsed)},
                )
                return True
            result = conn.execute(renew.where(held))
        return result.rowcount == 1

    def _complete_in_steps(
        self,
        conn: sa.Connection,
        task_id: str,
        epoch: int,
        result_key: str,
        ttl_s: float,
        price: int | None,
        info: dict[str, Any] | None,
        now: float,
        worker_id: int | None,
    ) -> bool:
        """SQLite: ``complete`` a statement at a time, under ``BEGIN IMMEDIATE``."""
        row = self._lock_held(conn, task_id, epoch, worker_id)
        if row is None:
            return False
        held = int(row._mapping["credits"])
        final = held if price is None else min(held, price)
        self._one(
            conn.execute(
                tasks.update()
                .where(self._held(task_id, epoch))
                .values(
                    status=TaskStatus.COMPLETED.value,
                    progress=100,
                    completed_at=now,
                    result_key=result_key,
                    result_expires_at=now + ttl_s,
                    credits=final,
                    info=json.dumps(info or {}),
                    lease_owner=None,
                    lease_expires_at=None,
                )
            ),
            "complete",
            task_id,
        )
        if final < held:
            self._credit(conn, row, held - final, "settle", now)
        self._ended(conn, row, TaskStatus.COMPLETED)
        return True


def _eta(progress: int, elapsed: float | None) -> int | None:
    """Seconds left at this pace: the time so far, scaled by what remains of the work."""
    if elapsed is None or progress <= 0:
        return None
    return max(0, round(float(elapsed) * (100 - progress) / progress))
