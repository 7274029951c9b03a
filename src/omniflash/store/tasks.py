"""Tasks are the queue: submit (charge + insert), claim with a lease, heartbeat, finish, reap.

A worker holds a task through a ``Claim`` (owner, epoch).  Every write a worker makes
checks ``status = 'processing' AND lease_epoch = :epoch``, so a worker that paused past
its lease (and whose task was handed to someone else, or cancelled) cannot overwrite
the newer state.  Every way a task ends without a result refunds it in the same
transaction.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from typing import Any

import sqlalchemy as sa

from omniflash.contract import GenerationSpec
from omniflash.errors import Conflict, NotFound, PaymentRequired, RateLimited
from omniflash.ids import new_task_id
from omniflash.pricing import credits as to_credits
from omniflash.store.db import Database
from omniflash.store.keys import KeyInfo
from omniflash.store.schema import api_keys, ledger, tasks

__all__ = ["NOTIFY_CHANNEL", "Claim", "TaskRow", "TaskStatus", "TaskStore"]


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    """Queued, waiting for a worker."""
    PROCESSING = "processing"
    """A worker holds the lease and is generating."""
    COMPLETED = "completed"
    """The result file is stored; ``result_key`` names it."""
    FAILED = "failed"
    """Ended with an error; refunded."""
    CANCELLED = "cancelled"
    """Cancelled by its owner; refunded."""

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


NOTIFY_CHANNEL = "omniflash_tasks"
ACTIVE = (TaskStatus.PENDING.value, TaskStatus.PROCESSING.value)


@dataclasses.dataclass(frozen=True)
class TaskRow:
    id: str
    key_id: int
    status: TaskStatus
    progress: int
    spec: GenerationSpec
    seed: int
    credits: int
    estimated_time: int
    created_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None
    result_key: str | None
    result_expires_at: float | None
    result_deleted: bool
    attempts: int
    lease_epoch: int
    info: dict[str, Any]

    @classmethod
    def from_row(cls, row: sa.Row[tuple[object, ...]]) -> TaskRow:
        m = row._mapping
        return cls(
            id=m["id"],
            key_id=m["key_id"],
            status=TaskStatus(m["status"]),
            progress=m["progress"],
            spec=GenerationSpec.from_json(m["spec"]),
            seed=m["seed"],
            credits=m["credits"],
            estimated_time=m["estimated_time"],
            created_at=m["created_at"],
            started_at=m["started_at"],
            completed_at=m["completed_at"],
            error=m["error"],
            result_key=m["result_key"],
            result_expires_at=m["result_expires_at"],
            result_deleted=bool(m["result_deleted"]),
            attempts=m["attempts"],
            lease_epoch=m["lease_epoch"],
            info=json.loads(m["info"]) if m["info"] else {},
        )


@dataclasses.dataclass(frozen=True)
class Claim:
    task: TaskRow
    owner: str
    epoch: int


class TaskStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- the API side -------------------------------------------------------------------------

    def submit(
        self,
        key: KeyInfo,
        spec: GenerationSpec,
        *,
        millicredits: int,
        estimated_time: int,
        seed: int,
        now: float | None = None,
    ) -> TaskRow:
        """Charge the key and queue the task in one transaction.

        Raises ``PaymentRequired`` (balance too small) or ``RateLimited`` (too many tasks in
        flight); either way nothing is charged or stored.
        """
        now = time.time() if now is None else now
        task_id = new_task_id(now)
        with self.db.write() as conn:
            # Locking the key row serialises one key's submits on PostgreSQL, so the
            # in-flight count and the balance check below cannot race.
            balance = conn.execute(
                self.db.for_update(sa.select(api_keys.c.balance).where(api_keys.c.id == key.id))
            ).scalar_one()
            in_flight = conn.execute(
                sa.select(sa.func.count()).where(
                    tasks.c.key_id == key.id, tasks.c.status.in_(ACTIVE)
                )
            ).scalar_one()
            if in_flight >= key.max_concurrent:
                raise RateLimited(
                    f"Too many tasks in flight: this key allows {key.max_concurrent} pending or "
                    "processing tasks at once. Wait for one to finish",
                    retry_after=5,
                )
            if balance < millicredits:
                raise PaymentRequired(
                    "Insufficient account balance. Please recharge and try again "
                    f"(this task needs {to_credits(millicredits)} credits, "
                    f"the balance is {to_credits(balance)})"
                )
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key.id)
                .values(balance=api_keys.c.balance - millicredits)
            )
            conn.execute(
                ledger.insert().values(
                    key_id=key.id,
                    task_id=task_id,
                    delta=-millicredits,
                    reason="charge",
                    created_at=now,
                )
            )
            conn.execute(
                tasks.insert().values(
                    id=task_id,
                    key_id=key.id,
                    status=TaskStatus.PENDING.value,
                    progress=0,
                    spec=spec.to_json(),
                    seed=seed,
                    credits=millicredits,
                    estimated_time=estimated_time,
                    created_at=now,
                    attempts=0,
                    lease_epoch=0,
                    result_deleted=False,
                )
            )
            self._announce(conn)
            row = conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).one()
        return TaskRow.from_row(row)

    def get(self, task_id: str, key_id: int | None = None) -> TaskRow:
        """A task; with ``key_id``, only that key's (another key's task is simply not found)."""
        query = sa.select(tasks).where(tasks.c.id == task_id)
        if key_id is not None:
            query = query.where(tasks.c.key_id == key_id)
        with self.db.read() as conn:
            row = conn.execute(query).one_or_none()
        if row is None:
            raise NotFound(f"No task {task_id!r} for this API key")
        return TaskRow.from_row(row)

    def list_for_key(
        self, key_id: int, *, limit: int = 20, after: str | None = None
    ) -> list[TaskRow]:
        """The key's tasks, newest first; ``after`` is the last id of the previous page."""
        query = sa.select(tasks).where(tasks.c.key_id == key_id)
        if after:
            # Task ids are ULIDs: they sort by creation time.
            query = query.where(tasks.c.id < after)
        query = query.order_by(tasks.c.id.desc()).limit(limit)
        with self.db.read() as conn:
            return [TaskRow.from_row(r) for r in conn.execute(query).all()]

    def cancel(self, task_id: str, key_id: int, now: float | None = None) -> TaskRow:
        """Cancel a pending or processing task and refund it; a finished one is a ``Conflict``."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            row = conn.execute(
                self.db.for_update(
                    sa.select(tasks).where(tasks.c.id == task_id, tasks.c.key_id == key_id)
                )
            ).one_or_none()
            if row is None:
                raise NotFound(f"No task {task_id!r} for this API key")
            status = TaskStatus(row._mapping["status"])
            if status.terminal:
                raise Conflict(f"Task {task_id} is already {status.value} and cannot be cancelled")
            self._end(conn, row, TaskStatus.CANCELLED, now, error="cancelled by the user")
            return TaskRow.from_row(
                conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).one()
            )

    # -- the worker side ----------------------------------------------------------------------

    def claim(self, owner: str, lease_s: float, now: float | None = None) -> Claim | None:
        """Take the oldest pending task under a lease, or ``None`` when the queue is empty."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            task_id = conn.execute(
                self.db.for_update(
                    sa.select(tasks.c.id)
                    .where(tasks.c.status == TaskStatus.PENDING.value)
                    .order_by(tasks.c.created_at, tasks.c.id)
                    .limit(1),
                    skip_locked=True,
                )
            ).scalar_one_or_none()
            if task_id is None:
                return None
            conn.execute(
                tasks.update()
                .where(tasks.c.id == task_id, tasks.c.status == TaskStatus.PENDING.value)
                .values(
                    status=TaskStatus.PROCESSING.value,
                    lease_owner=owner,
                    lease_expires_at=now + lease_s,
                    lease_epoch=tasks.c.lease_epoch + 1,
                    attempts=tasks.c.attempts + 1,
                    started_at=sa.func.coalesce(tasks.c.started_at, now),
                )
            )
            row = TaskRow.from_row(
                conn.execute(sa.select(tasks).where(tasks.c.id == task_id)).one()
            )
        return Claim(task=row, owner=owner, epoch=row.lease_epoch)

    def _held(self, claim: Claim) -> sa.ColumnElement[bool]:
        return sa.and_(
            tasks.c.id == claim.task.id,
            tasks.c.status == TaskStatus.PROCESSING.value,
            tasks.c.lease_epoch == claim.epoch,
        )

    def heartbeat(
        self, claim: Claim, *, progress: int, lease_s: float, now: float | None = None
    ) -> bool:
        """Renew the lease and record progress; False once the task is no longer this claim's."""
        now = time.time() if now is None else now
        progress = max(0, min(99, progress))
        with self.db.write() as conn:
            result = conn.execute(
                tasks.update()
                .where(self._held(claim))
                .values(
                    lease_expires_at=now + lease_s,
                    progress=sa.case(
                        (tasks.c.progress < progress, progress), else_=tasks.c.progress
                    ),
                )
            )
        return result.rowcount == 1

    def complete(
        self,
        claim: Claim,
        *,
        result_key: str,
        expires_at: float,
        final_millicredits: int | None = None,
        info: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> bool:
        """Record the result; a smaller final price than the hold is refunded in the same step."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            row = conn.execute(sa.select(tasks).where(self._held(claim))).one_or_none()
            if row is None:
                return False
            held = int(row._mapping["credits"])
            final = held if final_millicredits is None else min(held, final_millicredits)
            conn.execute(
                tasks.update()
                .where(self._held(claim))
                .values(
                    status=TaskStatus.COMPLETED.value,
                    progress=100,
                    completed_at=now,
                    result_key=result_key,
                    result_expires_at=expires_at,
                    credits=final,
                    info=json.dumps(info or {}),
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if final < held:
                self._credit(conn, row, held - final, "settle", now)
        return True

    def fail(
        self,
        claim: Claim,
        message: str,
        *,
        retry: bool,
        max_attempts: int,
        now: float | None = None,
    ) -> bool:
        """End an attempt with an error: back to pending if ``retry`` and attempts remain."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            row = conn.execute(sa.select(tasks).where(self._held(claim))).one_or_none()
            if row is None:
                return False
            if retry and int(row._mapping["attempts"]) < max_attempts:
                self._requeue(conn, claim.task.id)
            else:
                self._end(conn, row, TaskStatus.FAILED, now, error=message)
        return True

    def reap(self, max_attempts: int, now: float | None = None) -> int:
        """Expired leases go back to pending, or fail (refunded) after ``max_attempts``."""
        now = time.time() if now is None else now
        with self.db.write() as conn:
            rows = conn.execute(
                self.db.for_update(
                    sa.select(tasks).where(
                        tasks.c.status == TaskStatus.PROCESSING.value,
                        tasks.c.lease_expires_at < now,
                    ),
                    skip_locked=True,
                )
            ).all()
            for row in rows:
                if int(row._mapping["attempts"]) >= max_attempts:
                    self._end(
                        conn,
                        row,
                        TaskStatus.FAILED,
                        now,
                        error=f"the worker stopped responding {max_attempts} times; giving up",
                    )
                else:
                    self._requeue(conn, row._mapping["id"])
        return len(rows)

    def pending_count(self) -> int:
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(tasks.c.status == TaskStatus.PENDING.value)
                ).scalar_one()
            )

    def expired_results(self, now: float | None = None, limit: int = 500) -> list[TaskRow]:
        now = time.time() if now is None else now
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(tasks)
                .where(
                    tasks.c.status == TaskStatus.COMPLETED.value,
                    tasks.c.result_deleted.is_(False),
                    tasks.c.result_expires_at < now,
                )
                .limit(limit)
            ).all()
        return [TaskRow.from_row(r) for r in rows]

    def mark_result_deleted(self, task_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(tasks.update().where(tasks.c.id == task_id).values(result_deleted=True))

    # -- shared steps -------------------------------------------------------------------------

    def _requeue(self, conn: sa.Connection, task_id: str) -> None:
        conn.execute(
            tasks.update()
            .where(tasks.c.id == task_id)
            .values(status=TaskStatus.PENDING.value, lease_owner=None, lease_expires_at=None)
        )
        self._announce(conn)

    def _announce(self, conn: sa.Connection) -> None:
        """PostgreSQL: wake workers in other processes (sent when the transaction commits)."""
        if not self.db.is_sqlite:
            conn.execute(sa.text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})

    def _credit(
        self, conn: sa.Connection, row: sa.Row[Any], amount: int, reason: str, now: float
    ) -> None:
        m = row._mapping
        conn.execute(
            api_keys.update()
            .where(api_keys.c.id == m["key_id"])
            .values(balance=api_keys.c.balance + amount)
        )
        conn.execute(
            ledger.insert().values(
                key_id=m["key_id"], task_id=m["id"], delta=amount, reason=reason, created_at=now
            )
        )

    def _end(
        self, conn: sa.Connection, row: sa.Row[Any], status: TaskStatus, now: float, *, error: str
    ) -> None:
        """Fail or cancel a task and refund what it was charged, in the caller's transaction."""
        m = row._mapping
        if int(m["credits"]):
            self._credit(conn, row, int(m["credits"]), "refund", now)
        conn.execute(
            tasks.update()
            .where(tasks.c.id == m["id"])
            .values(
                status=status.value,
                progress=100,
                completed_at=now,
                error=error,
                credits=0,
                lease_owner=None,
                lease_expires_at=None,
                lease_epoch=tasks.c.lease_epoch + 1,
            )
        )
