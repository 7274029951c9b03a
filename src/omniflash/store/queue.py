"""The lease queue: claim, heartbeat, complete, fail, release, and the reaper.

A worker holds a task through its lease epoch.  Every write on a worker's behalf
(heartbeat, complete, fail, release) matches ``status = 'processing' AND lease_epoch =
:epoch`` and checks the row count it got, so a worker that paused past its lease (and
whose task was reaped, handed to someone else, or cancelled) changes nothing.  Every way
a task ends without a result refunds it in the transaction that ends it, and that
transaction moves the epoch on, so a task is refunded at most once (``task_ends``).

Lease times come from the database's clock, never a process's own.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from omniflash.contract import GenerationSpec
from omniflash.pricing import Pricing
from omniflash.store.db import OutcomeUnknown, retry_disconnect, retry_repeatable
from omniflash.store.lease_statements import CLAIM, COMPLETE, HEARTBEAT, TASK_SPEC
from omniflash.store.lease_steps import LeaseSteps
from omniflash.store.schema import task_events, tasks
from omniflash.store.task_rows import TERMINAL, Claim, TaskRow, TaskStatus

__all__ = ["LeaseQueue"]

log = logging.getLogger(__name__)


def _found_if_unknown(claim: Callable[..., Claim | None]) -> Callable[..., Claim | None]:
    """A claim whose commit was lost may have taken a task: a worker loop claims only
    while it holds nothing, so a task leased to its ``owner`` is that claim's, and is
    handed over instead of being left to run out its lease (and use up an attempt)."""

    @functools.wraps(claim)
    def wrapper(self: LeaseQueue, *args: Any, **kwargs: Any) -> Claim | None:
        try:
            return claim(self, *args, **kwargs)
        except OutcomeUnknown:
            owner = str(kwargs["owner"] if "owner" in kwargs else args[0])
            found = self._leased_to(owner)
            return found if found is not None else claim(self, *args, **kwargs)

    return wrapper


class LeaseQueue(LeaseSteps):
    """The task store's worker side: leases, and the reaper of expired ones."""

    @retry_disconnect
    def _leased_to(self, owner: str) -> Claim | None:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(tasks)
                .where(tasks.c.status == TaskStatus.PROCESSING.value, tasks.c.lease_owner == owner)
                .order_by(tasks.c.started_at.desc())
                .limit(1)
            ).one_or_none()
        if row is None:
            return None
        task = TaskRow.from_row(row)
        return Claim(task=task, owner=owner, epoch=task.lease_epoch)

    @_found_if_unknown
    @retry_disconnect
    def claim(
        self, owner: str, lease_s: float, now: float | None = None, *, worker_id: int | None = None
    ) -> Claim | None:
        """Take the oldest pending task under a lease, or ``None`` when the queue is empty.

        With ``worker_id`` (a remote worker's token), the lease is bound to that token, and
        a revoked token gets ``AuthenticationFailed`` instead: the claim holds the token's
        row (``FOR SHARE``) until it commits, and a revoke updates that row before it hands
        the token's leases back, so a task is either claimed before the revoke (and handed
        back by it) or not at all.
        """
        if not self.db.is_sqlite:
            found = self._claim_in_one_statement(owner, lease_s, now, worker_id)
        else:
            found = self._claim_in_steps(owner, lease_s, now, worker_id)
        if found is None:
            return None
        row = TaskRow.from_row(found)
        return Claim(task=row, owner=owner, epoch=row.lease_epoch)

    def _claim_in_one_statement(
        self, owner: str, lease_s: float, now: float | None, worker_id: int | None
    ) -> sa.Row[Any] | None:
        """PostgreSQL: the claim, its event and its notice are ``CLAIM``, one statement that
        commits by itself; a remote worker's token is held (``FOR SHARE``) first, in the
        same transaction."""
        params = {
            "p_owner": owner,
            "p_worker": worker_id,
            "p_lease_s": lease_s,
            "p_at": now,
            "p_now": time.time() if now is None else now,
        }
        if worker_id is None:
            try:
                # Durable: the epoch it takes is the lease's fencing token, and a claim a
                # crash undid would hand the same epoch to a second worker.
                with self.db.statement() as conn:
                    return conn.execute(CLAIM, params).one_or_none()
            except sa.exc.DBAPIError as exc:
                # It commits by itself: a drop leaves open whether it took a task.
                if exc.connection_invalidated:
                    raise OutcomeUnknown.of(exc) from exc
                raise
        with self.db.write() as conn:
            self._check_token(conn, worker_id)
            return conn.execute(CLAIM, params).one_or_none()

    @retry_repeatable
    def heartbeat(
        self,
        task_id: str,
        epoch: int,
        *,
        progress: int,
        lease_s: float,
        now: float | None = None,
        worker_id: int | None = None,
        max_run_s: float | None = None,
    ) -> bool:
        """Renew the lease and record progress; False once the task is no longer this lease's.

        ``worker_id`` (here and in ``complete``, ``fail`` and ``release``): the remote
        worker's token, which must be the one holding the lease.  With ``max_run_s``, a
        lease claimed longer ago than that is not renewed: it runs out, and the reaper
        counts the attempt, so a worker cannot sit on a task for ever.
        """
        progress = max(0, min(99, progress))
        if not self.db.is_sqlite:
            params = {
                "p_task": task_id,
                "p_epoch": epoch,
                "p_worker": worker_id,
                "p_progress": progress,
                "p_lease_s": lease_s,
                "p_max_run": max_run_s,
                "p_at": now,
                "p_now": time.time() if now is None else now,
            }
            with self.db.statement(durable=False) as conn:
                return conn.execute(HEARTBEAT, params).one_or_none() is not None
        return self._heartbeat_in_steps(
            task_id, epoch, progress, lease_s, now, worker_id, max_run_s
        )

    @retry_repeatable
    def complete(
        self,
        task_id: str,
        epoch: int,
        *,
        result_key: str,
        ttl_s: float,
        seconds: int | None = None,
        pricing: Pricing | None = None,
        info: dict[str, Any] | None = None,
        now: float | None = None,
        worker_id: int | None = None,
        resolution: str | None = None,
    ) -> bool:
        """Record the result, priced here; less than the hold is refunded in the same step.

        The price is the one place a task is priced after its submit: ``pricing`` of the
        ``seconds`` of video the stored result holds (as the server read them from the
        file, never a worker's numbers), at the task's ``resolution`` (read from its row
        when not given; a caller that has read the task passes it), at most what the
        submit held.  Without ``seconds`` the hold stands.  False (and
        nothing written) when the lease is no longer held: the caller's file is nobody's
        result then.
        """
        now = time.time() if now is None else now
        price = None
        if seconds is not None:
            if resolution is None:
                resolution = self._spec_of(task_id).resolution
            price = (pricing or Pricing()).millicredits(resolution, seconds)
        if self.db.is_sqlite:
            return self._ending(
                lambda conn: self._complete_in_steps(
                    conn, task_id, epoch, result_key, ttl_s, price, info, now, worker_id
                )
            )
        params = {
            "p_task": task_id,
            "p_epoch": epoch,
            "p_worker": worker_id,
            "p_price": price,
            "p_result_key": result_key,
            "p_ttl_s": ttl_s,
            "p_info": json.dumps(info or {}),
            "p_now": now,
        }

        def in_one_statement(conn: sa.Connection) -> bool:
            ended = conn.execute(COMPLETE, params).one_or_none()
            if ended is None:
                return False
            if ended.k_keys != 1:
                raise RuntimeError(f"complete of {task_id} changed {ended.k_keys} key rows")
            self._end_hooks(conn, ended, TaskStatus.COMPLETED)
            return True

        return self._ending(in_one_statement)

    @retry_disconnect
    def _spec_of(self, task_id: str) -> GenerationSpec:
        """A task's spec (it never changes after the submit, so no lock is needed)."""
        with self.db.read() as conn:
            return GenerationSpec.from_json(
                conn.execute(TASK_SPEC, {"p_task": task_id}).scalar_one()
            )

    @retry_repeatable
    def fail(
        self,
        task_id: str,
        epoch: int,
        message: str,
        *,
        retry: bool,
        max_attempts: int,
        now: float | None = None,
        worker_id: int | None = None,
    ) -> bool:
        """End an attempt with an error: back to pending if ``retry`` and attempts remain."""
        now = time.time() if now is None else now

        def failed(conn: sa.Connection) -> bool:
            row = self._lock_held(conn, task_id, epoch, worker_id)
            if row is None:
                return False
            if retry and int(row._mapping["attempts"]) < max_attempts:
                self._requeue(conn, row)
            else:
                self._end(conn, row, TaskStatus.FAILED, now, error=message)
            return True

        return self._ending(failed)

    @retry_repeatable
    def release(self, task_id: str, epoch: int, *, worker_id: int | None = None) -> bool:
        """Hand a task back to the queue untried, as a worker that is stopping does.

        The attempt is not counted, so a graceful restart never uses up a task's attempts.
        """
        with self.db.write() as conn:
            row = self._lock_held(conn, task_id, epoch, worker_id)
            if row is None:
                return False
            self._requeue(conn, row, count_attempt=False)
        return True

    def reap(self, max_attempts: int, now: float | None = None) -> int:
        """Expired leases go back to pending, or fail (refunded) after ``max_attempts``.

        Each task is reaped in its own short transaction, so two replicas reaping at once
        take one lock each and never wait on each other in a cycle.  A task whose reaping
        raises is logged, reported (``report_error("reap", …)``) and skipped: one poisoned
        row never stops the others from being reaped.
        """
        clock = self._clock(now)
        expired = sa.and_(
            tasks.c.status == TaskStatus.PROCESSING.value, tasks.c.lease_expires_at < clock
        )
        with self.db.read() as conn:
            ids = conn.execute(sa.select(tasks.c.id).where(expired).limit(500)).scalars().all()
        reaped = 0
        for task_id in ids:
            try:
                reaped += self._reap_one(task_id, expired, max_attempts, now)
            except Exception:
                log.exception("reaping %s failed; reaping the others", task_id)
                self.report_error("reap", task_id)
        return reaped

    def _reap_one(
        self, task_id: str, expired: sa.ColumnElement[bool], max_attempts: int, now: float | None
    ) -> int:
        return self._ending(
            lambda conn: self._reap_locked(conn, task_id, expired, max_attempts, now)
        )

    def _reap_locked(
        self,
        conn: sa.Connection,
        task_id: str,
        expired: sa.ColumnElement[bool],
        max_attempts: int,
        now: float | None,
    ) -> int:
        row = conn.execute(
            self.db.for_update(
                sa.select(tasks).where(tasks.c.id == task_id, expired), skip_locked=True
            )
        ).one_or_none()
        if row is None:  # finished, renewed, or being reaped elsewhere meanwhile
            return 0
        if int(row._mapping["attempts"]) >= max_attempts:
            self._end(
                conn,
                row,
                TaskStatus.FAILED,
                time.time() if now is None else now,
                error=f"the worker stopped responding {max_attempts} times; giving up",
            )
        else:
            self._requeue(conn, row)
        return 1

    @retry_disconnect
    def pending_count(self) -> int:
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(tasks.c.status == TaskStatus.PENDING.value)
                ).scalar_one()
            )

    @retry_disconnect
    def expired(self, ttl_s: float, now: float | None = None, limit: int = 500) -> list[TaskRow]:
        """Ended tasks whose files (result and inputs) are due for deletion.

        A completed task's files go when its result URL expires; a failed or cancelled
        task's inputs ``ttl_s`` after it ended.  A row that does not parse is reported
        (``sweep``) and left out, so the others are still swept.
        """
        now = time.time() if now is None else now
        due = sa.func.coalesce(tasks.c.result_expires_at, tasks.c.completed_at + ttl_s)
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(tasks)
                .where(
                    tasks.c.status.in_(TERMINAL),
                    tasks.c.result_deleted.is_(False),
                    due < now,
                )
                .limit(limit)
            ).all()
        found = []
        for r in rows:
            try:
                found.append(TaskRow.from_row(r))
            except Exception:
                log.exception(
                    "task %s cannot be read; its files are left to the orphan sweep", r.id
                )
                self.report_error("sweep", str(r.id))
        return found

    @retry_repeatable
    def mark_result_deleted(self, task_id: str) -> None:
        """The task's files are gone: its events go with them."""
        with self.db.write() as conn:
            conn.execute(tasks.update().where(tasks.c.id == task_id).values(result_deleted=True))
            conn.execute(task_events.delete().where(task_events.c.task_id == task_id))
