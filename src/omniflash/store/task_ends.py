"""How a task leaves a lease or ends: the steps the submit side and the lease queue share.

A transaction that ends a task locks the task row first (``FOR UPDATE`` on PostgreSQL),
then touches the key row: the refund or settlement (``_credit``) and one task fewer in
flight (``_ended``).  Every update here matches the epoch (and, to end, an active status)
the locked row had and must change exactly one row (``_one``), so a task is ended, and
refunded, at most once.  End hooks (a webhook's outbox row, a metric) run in that same
transaction and see the task as it ended; one that fails is undone alone, by running the
transaction again without it (``_ending``).  Each step
writes its task event (``store.events``) in the same transaction: a requeue's ``status``,
an end's ``end``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from omniflash.store.db import Database
from omniflash.store.events import record
from omniflash.store.schema import api_keys, ledger, tasks
from omniflash.store.task_rows import (
    ACTIVE,
    NOTIFY_CHANNEL,
    EndHook,
    ErrorHook,
    TaskRow,
    TaskStatus,
)

__all__ = ["NOTIFY", "TASK_BY_ID", "TaskEnds"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_SKIPPED_HOOKS: contextvars.ContextVar[tuple[list[EndHook], list[str]] | None] = (
    contextvars.ContextVar("omniflash_skipped_end_hooks", default=None)
)
"""Where ``TaskEnds._ending`` tells its transaction's hooks which of them failed before
(and hears which it left out): not on the connection, which a drop makes unusable."""

TASK_BY_ID = sa.select(tasks).where(tasks.c.id == sa.bindparam("task_id"))
"""One task by id (parameter ``task_id``); built once: building costs more than running."""
NOTIFY = sa.select(sa.func.pg_notify(sa.bindparam("channel"), ""))
"""PostgreSQL: wake the listeners of ``channel`` when the transaction commits."""


class TaskEnds:
    """The task store's hooks and the steps that requeue or end a task (under its lock)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.end_hooks: list[EndHook] = []
        """Work that must commit or roll back with a task's end (a webhook's outbox row)."""
        self.submit_hooks: list[Callable[[TaskRow], None]] = []
        """Called after a submit made a new task (not for a replay), outside its transaction."""
        self.error_hooks: list[ErrorHook] = []
        """Told of each step skipped for one poisoned row: ``reap``, ``sweep``, ``webhook``,
        ``end_hook`` (the metrics count them)."""

    def report_error(self, job: str, item_id: str) -> None:
        """One row's step failed and the machinery moved on: tell the error hooks."""
        for hook in self.error_hooks:
            try:
                hook(job, item_id)
            except Exception:
                log.exception("error hook failed for %s of %s", job, item_id)

    def _clock(self, now: float | None) -> sa.ColumnElement[float]:
        return self.db.clock() if now is None else sa.literal(now, sa.Float)

    @staticmethod
    def _one(result: sa.CursorResult[Any], what: str, task_id: str) -> None:
        # The row is locked (or its key's row, for a key's counters) in this transaction.
        if result.rowcount != 1:
            raise RuntimeError(f"{what} of {task_id} changed {result.rowcount} rows")

    def _requeue(
        self, conn: sa.Connection, row: sa.Row[Any], *, count_attempt: bool = True
    ) -> None:
        m = row._mapping
        values: dict[str, Any] = {
            "status": TaskStatus.PENDING.value,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if not count_attempt:
            values["attempts"] = tasks.c.attempts - 1
        self._one(
            conn.execute(
                tasks.update()
                .where(tasks.c.id == m["id"], tasks.c.lease_epoch == m["lease_epoch"])
                .values(**values)
            ),
            "requeue",
            m["id"],
        )
        data = {"status": TaskStatus.PENDING.value, "progress": int(m["progress"])}
        record(conn, task_id=m["id"], key_id=m["key_id"], kind="status", data=data)
        self._announce(conn)

    def _announce(self, conn: sa.Connection) -> None:
        """PostgreSQL: wake workers in other processes (sent when the transaction commits)."""
        if not self.db.is_sqlite:
            conn.execute(NOTIFY, {"channel": NOTIFY_CHANNEL})

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
        """Fail or cancel a task ``row`` (locked by the caller) and refund what it was charged.

        The update matches the epoch and an active status it had when locked, and must
        change exactly that row: the refund below can then happen only once.
        """
        m = row._mapping
        self._one(
            conn.execute(
                tasks.update()
                .where(
                    tasks.c.id == m["id"],
                    tasks.c.lease_epoch == m["lease_epoch"],
                    tasks.c.status.in_(ACTIVE),
                )
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
            ),
            status.value,
            m["id"],
        )
        if int(m["credits"]):
            self._credit(conn, row, int(m["credits"]), "refund", now)
        self._ended(conn, row, status)

    def _ended(self, conn: sa.Connection, row: sa.Row[Any], status: TaskStatus) -> None:
        """In the transaction that moved ``row`` (locked) out of pending or processing."""
        m = row._mapping
        self._one(
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == m["key_id"])
                .values(in_flight=api_keys.c.in_flight - 1)
            ),
            "in-flight count",
            m["id"],
        )
        record(conn, task_id=m["id"], key_id=m["key_id"], kind="end", data={"status": status.value})
        self._end_hooks(conn, None, status, task_id=m["id"])

    def _ending(self, body: Callable[[sa.Connection], T]) -> T:
        """``body`` in a write transaction that may end a task (``_end``, ``_ended``,
        ``_end_hooks`` run inside it, and only inside this).

        End hooks run without a savepoint each (two round trips a hook, on every task's
        end): when one fails, the whole transaction is rolled back and run again without
        that hook, so what the hook wrote is undone alone and the task still ends.
        """
        skipped: list[EndHook] = []
        while True:
            left_out: list[str] = []  # a task id for each hook left out of this run
            try:
                token = _SKIPPED_HOOKS.set((skipped, left_out))
                try:
                    with self.db.write() as conn:
                        done = body(conn)
                finally:
                    _SKIPPED_HOOKS.reset(token)
            except _HookFailed as failed:
                skipped.append(failed.hook)
                continue
            # Told once the end has committed: a run again that found the task ended by
            # someone else (whose own hooks ran) left nothing out.
            for task_id in left_out:
                self.report_error("end_hook", task_id)
            return done

    def _end_hooks(
        self,
        conn: sa.Connection,
        ended: sa.Row[Any] | None,
        status: TaskStatus,
        *,
        task_id: str | None = None,
    ) -> None:
        """The end hooks, with the task as it ended: the ``ended`` row a statement returned,
        or the row ``task_id`` read again."""
        if not self.end_hooks:
            return
        if ended is None:
            ended = conn.execute(TASK_BY_ID, {"task_id": task_id}).one()
        task_id = str(ended._mapping["id"])
        try:
            task = TaskRow.from_row(ended)
        except Exception:  # a row that does not parse: no hook can use it
            log.exception("task %s cannot be read; it ends without its end hooks", task_id)
            for _hook in self.end_hooks:
                self.report_error("end_hook", task_id)
            return
        run = _SKIPPED_HOOKS.get()
        assert run is not None, "a task ends only inside TaskEnds._ending"
        skipped, left_out = run
        for hook in self.end_hooks:
            if hook in skipped:
                left_out.append(task_id)
                continue
            try:
                hook(conn, task, status)
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated:
                    raise  # not the hook's fault: the whole transaction is gone
                log.exception("an end hook of %s failed; the task ends without it", task_id)
                raise _HookFailed(hook, task_id) from exc
            except Exception as exc:
                log.exception("an end hook of %s failed; the task ends without it", task_id)
                raise _HookFailed(hook, task_id) from exc


class _HookFailed(Exception):
    """An end hook raised: ``TaskEnds._ending`` runs the transaction again without it."""

    def __init__(self, hook: EndHook, task_id: str) -> None:
        super().__init__(task_id)
        self.hook = hook
        self.task_id = task_id
