"""The API side of the task store: submit (count, charge, idempotency, queue) and cancel.

A submit locks the key row and inserts a new task row; it never locks an existing task
row, so its locks and those of a transaction that ends a task (task row, then key row)
are always taken in the same order.  The key row keeps two counters a submit checks
under its lock: the requests of the current minute (``rpm``) and the tasks in flight
(``max_concurrent``), one more here and one fewer in the transaction that ends the task.

SQLite runs the submit a statement at a time inside ``BEGIN IMMEDIATE``; PostgreSQL runs
it as one statement (``submit_statements.SUBMIT_IN_ONE_STATEMENT``), so that the key's row
lock lasts one statement's run instead of several round trips.  Two forms remain because
SQLite has no data-modifying CTE; they share the values they write (``task_values``),
the idempotency record's lifetime, the price (the caller's ``millicredits``) and the
refusals (``_refusal``, ``_idempotency_mismatch``).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from omniflash.contract import GenerationSpec
from omniflash.errors import (
    AuthenticationFailed,
    Conflict,
    IdempotencyMismatch,
    NotFound,
    OmniflashError,
    PaymentRequired,
    RateLimited,
)
from omniflash.ids import new_task_id
from omniflash.pricing import credits as to_credits
from omniflash.store.db import retry_disconnect
from omniflash.store.keys import KeyInfo, too_many_requests
from omniflash.store.schema import idempotency, tasks
from omniflash.store.submit_statements import (
    CHARGE,
    COUNT_AND_LOCK,
    IDEMPOTENCY_RECORD,
    IDEMPOTENCY_TTL_S,
    INSERT_IDEMPOTENCY,
    INSERT_LEDGER,
    INSERT_TASK,
    SUBMIT_IN_ONE_STATEMENT,
    submit_params,
)
from omniflash.store.task_ends import TASK_BY_ID, TaskEnds
from omniflash.store.task_rows import (
    ACTIVE,
    IdempotencyRequest,
    Submission,
    TaskRow,
    TaskStatus,
)

__all__ = ["Submissions"]


def _idempotency_mismatch() -> IdempotencyMismatch:
    return IdempotencyMismatch(
        "This Idempotency-Key was already used with a different request body; "
        "use a new key for a new request"
    )


class Submissions(TaskEnds):
    """Submit, read and cancel: the task store's API side."""

    def submit(
        self,
        key: KeyInfo,
        spec: GenerationSpec,
        *,
        millicredits: int,
        estimated_time: int,
        seed: int,
        idempotency_key: IdempotencyRequest | None = None,
        now: float | None = None,
    ) -> Submission:
        """Count the request, charge the key and queue the task: one transaction (one
        statement on PostgreSQL, ``_submit_in_one_statement``).

        The first statement counts the request against the key's ``rpm`` (see
        ``keys.COUNT_REQUEST``) and locks the key's row, which serialises the key's
        submits: the in-flight count, the balance check and the idempotency lookup below
        cannot race.  With ``idempotency_key``, the transaction records it, or finds the
        task an earlier submit with the same key made and returns that (``replayed``),
        charging nothing.  Raises ``RateLimited`` (over ``rpm``, or too many tasks in
        flight), ``PaymentRequired`` (balance too small), ``IdempotencyMismatch`` (the
        key was used with another body) or ``AuthenticationFailed`` (revoked since it was
        looked up); then nothing is charged or stored, and the request is still counted.
        """
        now = time.time() if now is None else now
        task_id = new_task_id(now)
        params = submit_params(
            key.id,
            task_id,
            spec.to_json(),
            millicredits=millicredits,
            estimated_time=estimated_time,
            seed=seed,
            idempotency_key=idempotency_key,
            now=now,
        )
        if not self.db.is_sqlite:
            return self._submit_in_one_statement(params, idempotency_key, now)
        refused: OmniflashError | None = None
        with self.db.write() as conn:
            k = (  # the key row, counted and locked
                conn.execute(COUNT_AND_LOCK, {"key_id": key.id, "window": params["window"]})
                .one()
                ._mapping
            )
            if k["revoked_at"] is not None:
                raise AuthenticationFailed()
            if k["rate_hits"] > k["rpm"]:
                # Rolled back: the count stays at the limit, which refuses the next one too.
                raise too_many_requests(k["rpm"], now)
            replay = None
            if idempotency_key is not None:
                try:
                    replay = self._idempotent(conn, key.id, idempotency_key, now)
                except IdempotencyMismatch as exc:
                    refused = exc
            if refused is None and replay is None:
                refused = self._refusal(
                    k["in_flight"], k["max_concurrent"], k["balance"], millicredits
                )
            if refused is None and replay is not None:
                row = conn.execute(TASK_BY_ID, {"task_id": replay}).one()
            elif refused is None:
                row = self._queue(conn, params)
        # A refusal commits the count above and nothing else.
        if refused is not None:
            raise refused
        task = TaskRow.from_row(row)
        return Submission(task, replayed=True) if replay is not None else self._made(task)

    def _submit_in_one_statement(
        self, params: dict[str, Any], idempotency_key: IdempotencyRequest | None, now: float
    ) -> Submission:
        """PostgreSQL: ``submit`` as one statement (``SUBMIT_IN_ONE_STATEMENT``), so that the
        key's row lock lasts one statement's run instead of several round trips."""
        task_id, millicredits = params["task"], params["amount"]
        dropped = False
        for _look in range(3):
            try:
                with self.db.statement() as conn:
                    m = conn.execute(SUBMIT_IN_ONE_STATEMENT, params).one()._mapping
            except sa.exc.DBAPIError as exc:
                # The statement commits by itself, so a dropped connection leaves its
                # outcome open; the task's id is chosen here, so the store can look.
                if dropped or not exc.connection_invalidated:
                    raise
                dropped = True
                made = self._made_by(task_id)
                if made is not None:
                    return self._made(made)
                continue  # it did not happen: submit again, on a fresh connection
            if m["k_revoked_at"] is not None:
                raise AuthenticationFailed()
            if m["k_hits"] > m["k_rpm"]:
                raise too_many_requests(m["k_rpm"], now)
            if m["k_prior_task"] is not None:
                assert idempotency_key is not None
                if m["k_prior_hash"] != idempotency_key.body_hash:
                    raise _idempotency_mismatch()
                return Submission(self.get(m["k_prior_task"]), replayed=True)
            if m["id"] is not None:
                return self._made(TaskRow.from_mapping(m))
            if not m["k_ok"]:
                refused = self._refusal(
                    m["k_in_flight"], m["k_max_concurrent"], m["k_balance"], millicredits
                )
                assert refused is not None
                raise refused
            # Another submit recorded this idempotency key while this one waited for the
            # key's row: look again, without counting the request a second time.
            params["count"] = 0
        raise RuntimeError(f"submit {task_id}: the idempotency record did not settle")

    @staticmethod
    def _refusal(
        in_flight: int, max_concurrent: int, balance: int, millicredits: int
    ) -> OmniflashError | None:
        """Why a key (its locked, counted row says these) cannot queue a new task, if it cannot."""
        if in_flight >= max_concurrent:
            return RateLimited(
                f"Too many tasks in flight: this key allows {max_concurrent} pending or "
                "processing tasks at once. Wait for one to finish",
                retry_after=5,
            )
        if balance < millicredits:
            return PaymentRequired(
                "Insufficient account balance. Please recharge and try again "
                f"(this task needs {to_credits(millicredits)} credits, "
                f"the balance is {to_credits(balance)})"
            )
        return None

    @retry_disconnect
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

    def _made_by(self, task_id: str) -> TaskRow | None:
        """The task ``task_id``, if a submit whose answer was lost made it."""
        try:
            return self.get(task_id)
        except NotFound:
            return None

    def _made(self, task: TaskRow) -> Submission:
        for hook in self.submit_hooks:
            hook(task)
        return Submission(task, replayed=False)

    def _queue(self, conn: sa.Connection, params: dict[str, Any]) -> sa.Row[Any]:
        """Charge the key and insert the pending task (and its idempotency record)."""
        if params["idem"] is not None:
            # Rolled back with the task if the submit fails, so the key can be used again.
            conn.execute(INSERT_IDEMPOTENCY, params)
        self._one(conn.execute(CHARGE, params), "charge", params["task"])
        conn.execute(INSERT_LEDGER, params)
        row = conn.execute(INSERT_TASK, params).one()
        self._announce(conn)
        return row

    @staticmethod
    def in_flight(key_id: int) -> sa.Select[int]:
        """The count of the key's pending and processing tasks, from the tasks themselves
        (what ``api_keys.in_flight`` keeps without counting)."""
        return sa.select(sa.func.count()).where(
            tasks.c.key_id == key_id, tasks.c.status.in_(ACTIVE)
        )

    def _idempotent(
        self, conn: sa.Connection, key_id: int, request: IdempotencyRequest, now: float
    ) -> str | None:
        """The task an earlier submit with ``request``'s key made, if any (an expired
        record is deleted); raises ``IdempotencyMismatch`` when that used another body."""
        params = {"key": key_id, "idem": request.key}
        row = conn.execute(IDEMPOTENCY_RECORD, params).one_or_none()
        if row is not None and row.created_at < now - IDEMPOTENCY_TTL_S:
            conn.execute(
                idempotency.delete().where(
                    idempotency.c.key_id == key_id, idempotency.c.idem_key == request.key
                )
            )
            row = None
        if row is None:
            return None
        if row.body_hash != request.body_hash:
            raise _idempotency_mismatch()
        return str(row.task_id)

    @retry_disconnect
    def cancel(self, task_id: str, key_id: int, now: float | None = None) -> TaskRow:
        """Cancel a pending or processing task and refund it; a finished one is a ``Conflict``."""
        now = time.time() if now is None else now

        def cancelled(conn: sa.Connection) -> TaskRow:
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

        return self._ending(cancelled)
