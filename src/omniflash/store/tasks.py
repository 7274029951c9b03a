"""Tasks are the queue: submit (charge + insert), claim with a lease, heartbeat, finish, reap.

A worker holds a task through its lease epoch.  Every write on a worker's behalf
(heartbeat, complete, fail, release) matches ``status = 'processing' AND lease_epoch =
:epoch`` and checks the row count it got, so a worker that paused past its lease (and
whose task was reaped, handed to someone else, or cancelled) changes nothing.  Every way
a task ends without a result refunds it in the transaction that ends it, and that
transaction moves the epoch on, so a task is refunded at most once.

Locks, on PostgreSQL (SQLite's ``BEGIN IMMEDIATE`` serialises every writer anyway):
a transaction that ends a task locks the task row first (``FOR UPDATE``, re-checking
its status and epoch once it holds the lock), then touches the key row (refund, settle,
one task fewer in flight).  A submit locks the key row and inserts a new task row.  No
transaction locks a key row and then an existing task row, and no transaction refunds
two keys, so the locks are always taken in the same order and two replicas can neither
deadlock nor double-refund.

The key row keeps two counters a submit checks under its lock: the requests of the
current minute (``rpm``) and the tasks in flight (``max_concurrent``), one more in the
submit's transaction and one fewer in the transaction that ends the task (``_ended``).
On PostgreSQL a submit is one statement (``_SUBMIT_STATEMENT``).

Lease times come from the database's clock, never a process's own.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
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
from omniflash.store.db import Database, OutcomeUnknown, retry_disconnect, retry_repeatable
from omniflash.store.keys import COUNT_REQUEST, KeyInfo, rate_window, too_many_requests
from omniflash.store.schema import (
    ACTIVE_PREDICATE,
    api_keys,
    idempotency,
    ledger,
    tasks,
    worker_tokens,
)

__all__ = [
    "NOTIFY_CHANNEL",
    "Claim",
    "EndHook",
    "ErrorHook",
    "IdempotencyRequest",
    "Submission",
    "TaskRow",
    "TaskStatus",
    "TaskStore",
]

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_S = 24 * 3600

# SQLite's submit, a statement at a time inside ``BEGIN IMMEDIATE``; built once: building a
# statement costs more than running it.
_COUNT_AND_LOCK = COUNT_REQUEST.returning(
    api_keys.c.rate_hits,
    api_keys.c.rpm,
    api_keys.c.balance,
    api_keys.c.max_concurrent,
    api_keys.c.in_flight,
    api_keys.c.revoked_at,
)
_CHARGE = (
    api_keys.update()
    .where(api_keys.c.id == sa.bindparam("key_id"))
    .values(
        balance=api_keys.c.balance - sa.bindparam("amount"),
        in_flight=api_keys.c.in_flight + 1,
    )
)
_INSERT_LEDGER = ledger.insert()
_INSERT_IDEMPOTENCY = idempotency.insert()
_INSERT_TASK = tasks.insert().returning(*tasks.c)
_TASK_BY_ID = sa.select(tasks).where(tasks.c.id == sa.bindparam("task_id"))
_IDEMPOTENCY_RECORD = sa.select(idempotency).where(
    idempotency.c.key_id == sa.bindparam("key_id"),
    idempotency.c.idem_key == sa.bindparam("idem_key"),
)
_NOTIFY = sa.text("SELECT pg_notify(:channel, '')")
# PostgreSQL: the whole submit as one statement that commits by itself.  ``old`` locks the
# key row and reads it (FOR UPDATE waits for, then reads, the latest version); ``prior`` is
# an unexpired record of the idempotency key; ``verdict`` decides.  The key row is counted
# (``:count`` is 0 on a second look, so a request counts once) unless over ``rpm``, as a
# refused transaction would not have been; with a yes, the idempotency key is recorded
# (over an expired record) and only if that took (``go``) is the key charged and the
# task queued; the workers are notified at commit.  A record another submit committed
# while this one waited for the lock is not in this statement's snapshot: ``remembered``
# then takes nothing and no task is made, and ``submit`` looks again.
_SUBMIT_STATEMENT = sa.text(
    f"""
WITH old AS (
    SELECT id, rpm, max_concurrent, balance, in_flight, revoked_at,
           CASE WHEN rate_window = :window THEN rate_hits + :count ELSE :count END AS hits
    FROM {api_keys.name} WHERE id = :key_id FOR UPDATE
), prior AS (
    SELECT task_id, body_hash FROM {idempotency.name}
    WHERE key_id = :key_id AND idem_key = CAST(:idem_key AS TEXT)
      AND created_at >= :fresh_after
), verdict AS (
    SELECT old.*, prior.task_id AS prior_task, prior.body_hash AS prior_hash,
           (prior.task_id IS NULL AND revoked_at IS NULL AND hits <= rpm
            AND in_flight < max_concurrent AND balance >= :amount) AS ok
    FROM old LEFT JOIN prior ON true
), remembered AS (
    INSERT INTO {idempotency.name} AS i (key_id, idem_key, body_hash, task_id, created_at)
    SELECT id, CAST(:idem_key AS TEXT), :body_hash, :id, :now FROM verdict
    WHERE ok AND CAST(:idem_key AS TEXT) IS NOT NULL
    ON CONFLICT (key_id, idem_key) DO UPDATE
        SET body_hash = EXCLUDED.body_hash, task_id = EXCLUDED.task_id,
            created_at = EXCLUDED.created_at
        WHERE i.created_at < :fresh_after
    RETURNING i.task_id
), go AS (
    SELECT id FROM verdict
    WHERE ok AND (CAST(:idem_key AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM remembered))
), counted AS (
    UPDATE {api_keys.name} AS k SET
        rate_window = :window,
        rate_hits = verdict.hits,
        balance = k.balance - CASE WHEN EXISTS (SELECT 1 FROM go) THEN :amount ELSE 0 END,
        in_flight = k.in_flight + CASE WHEN EXISTS (SELECT 1 FROM go) THEN 1 ELSE 0 END
    FROM verdict WHERE k.id = verdict.id AND verdict.hits <= verdict.rpm
), charged AS (
    INSERT INTO {ledger.name} (key_id, task_id, delta, reason, created_at)
    SELECT id, :id, -CAST(:amount AS BIGINT), 'charge', :now FROM go
), queued AS (
    INSERT INTO {tasks.name} (id, key_id, status, progress, spec, seed, credits,
        estimated_time, created_at, attempts, lease_epoch, result_deleted)
    SELECT :id, id, 'pending', 0, :spec, :seed, :amount, :estimated_time, :now, 0, 0, false
    FROM go
    RETURNING *
)
SELECT verdict.ok AS k_ok, verdict.hits AS k_hits, verdict.rpm AS k_rpm,
       verdict.max_concurrent AS k_max_concurrent, verdict.in_flight AS k_in_flight,
       verdict.balance AS k_balance, verdict.revoked_at AS k_revoked_at,
       verdict.prior_task AS k_prior_task, verdict.prior_hash AS k_prior_hash, queued.*,
       CASE WHEN queued.id IS NOT NULL THEN pg_notify(:channel, '') END AS k_notified
FROM verdict LEFT JOIN queued ON true
"""
)


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
TERMINAL = tuple(s.value for s in TaskStatus if s.terminal)


@functools.lru_cache(maxsize=4096)
def _spec(text: str) -> GenerationSpec:
    """A task's spec, parsed once per process: it never changes after the submit, and
    a poll or a page of tasks would otherwise parse the same JSON again each time."""
    return GenerationSpec.from_json(text)


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
    lease_worker: int | None = None
    """The worker token that holds (or last held) the lease; ``None`` for in-process workers."""

    @classmethod
    def from_row(cls, row: sa.Row[tuple[object, ...]]) -> TaskRow:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> TaskRow:
        """From a row's columns by name (a SQLAlchemy row's mapping, or a plain dict)."""
        return cls(
            id=m["id"],
            key_id=m["key_id"],
            status=TaskStatus(m["status"]),
            progress=m["progress"],
            spec=_spec(m["spec"]),
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
            lease_worker=m.get("lease_worker"),
        )


@dataclasses.dataclass(frozen=True)
class Claim:
    task: TaskRow
    owner: str
    epoch: int


@dataclasses.dataclass(frozen=True)
class IdempotencyRequest:
    """A submit's ``Idempotency-Key`` and the hash of its body."""

    key: str
    body_hash: str


@dataclasses.dataclass(frozen=True)
class Submission:
    task: TaskRow
    replayed: bool
    """True when an earlier submit with the same ``Idempotency-Key`` made ``task``."""


EndHook = Callable[[sa.Connection, str, "TaskStatus"], None]
"""Called inside the transaction that ends a task, with its id and final status."""
ErrorHook = Callable[[str, str], None]
"""Called with ``(job, id)`` when one task's (or delivery's) step failed and was skipped."""


def _idempotency_mismatch() -> IdempotencyMismatch:
    return IdempotencyMismatch(
        "This Idempotency-Key was already used with a different request body; "
        "use a new key for a new request"
    )


def _found_if_unknown(claim: Callable[..., Claim | None]) -> Callable[..., Claim | None]:
    """A claim whose commit was lost may have taken a task: a worker loop claims only
    while it holds nothing, so a task leased to its ``owner`` is that claim's, and is
    handed over instead of being left to run out its lease (and use up an attempt)."""

    @functools.wraps(claim)
    def wrapper(self: TaskStore, *args: Any, **kwargs: Any) -> Claim | None:
        try:
            return claim(self, *args, **kwargs)
        except OutcomeUnknown:
            owner = str(kwargs["owner"] if "owner" in kwargs else args[0])
            found = self._leased_to(owner)
            return found if found is not None else claim(self, *args, **kwargs)

    return wrapper


class TaskStore:
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

    # -- the API side -------------------------------------------------------------------------

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
        if not self.db.is_sqlite:
            return self._submit_in_one_statement(
                key, task_id, spec, millicredits, estimated_time, seed, idempotency_key, now
            )
        refused: OmniflashError | None = None
        with self.db.write() as conn:
            k = (  # the key row, counted and locked
                conn.execute(_COUNT_AND_LOCK, {"key_id": key.id, "window": rate_window(now)})
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
                row = conn.execute(_TASK_BY_ID, {"task_id": replay}).one()
            elif refused is None:
                row = self._queue(
                    conn,
                    key.id,
                    task_id,
                    spec,
                    millicredits=millicredits,
                    estimated_time=estimated_time,
                    seed=seed,
                    idempotency_key=idempotency_key,
                    now=now,
                )
        # A refusal commits the count above and nothing else.
        if refused is not None:
            raise refused
        task = TaskRow.from_row(row)
        return Submission(task, replayed=True) if replay is not None else self._made(task)

    def _submit_in_one_statement(
        self,
        key: KeyInfo,
        task_id: str,
        spec: GenerationSpec,
        millicredits: int,
        estimated_time: int,
        seed: int,
        idempotency_key: IdempotencyRequest | None,
        now: float,
    ) -> Submission:
        """PostgreSQL: ``submit`` as one statement (``_SUBMIT_STATEMENT``), so that the key's
        row lock lasts one statement's run instead of several round trips."""
        params = {
            "key_id": key.id,
            "window": rate_window(now),
            "count": 1,
            "amount": millicredits,
            "id": task_id,
            "spec": spec.to_json(),
            "seed": seed,
            "estimated_time": estimated_time,
            "now": now,
            "idem_key": idempotency_key.key if idempotency_key else None,
            "body_hash": idempotency_key.body_hash if idempotency_key else None,
            "fresh_after": now - IDEMPOTENCY_TTL_S,
            "channel": NOTIFY_CHANNEL,
        }
        dropped = False
        for _look in range(3):
            try:
                with self.db.statement() as conn:
                    m = conn.execute(_SUBMIT_STATEMENT, params).one()._mapping
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

    @retry_disconnect
    def _made_by(self, task_id: str) -> TaskRow | None:
        with self.db.read() as conn:
            row = conn.execute(_TASK_BY_ID, {"task_id": task_id}).one_or_none()
        return None if row is None else TaskRow.from_row(row)

    def _made(self, task: TaskRow) -> Submission:
        for hook in self.submit_hooks:
            hook(task)
        return Submission(task, replayed=False)

    def _queue(
        self,
        conn: sa.Connection,
        key_id: int,
        task_id: str,
        spec: GenerationSpec,
        *,
        millicredits: int,
        estimated_time: int,
        seed: int,
        idempotency_key: IdempotencyRequest | None,
        now: float,
    ) -> sa.Row[Any]:
        """Charge the key and insert the pending task (and its idempotency record)."""
        if idempotency_key is not None:
            # Rolled back with the task if the submit fails, so the key can be used again.
            conn.execute(
                _INSERT_IDEMPOTENCY,
                {
                    "key_id": key_id,
                    "idem_key": idempotency_key.key,
                    "body_hash": idempotency_key.body_hash,
                    "task_id": task_id,
                    "created_at": now,
                },
            )
        charged = conn.execute(_CHARGE, {"key_id": key_id, "amount": millicredits})
        self._one(charged, "charge", task_id)
        conn.execute(
            _INSERT_LEDGER,
            {
                "key_id": key_id,
                "task_id": task_id,
                "delta": -millicredits,
                "reason": "charge",
                "created_at": now,
            },
        )
        row = conn.execute(
            _INSERT_TASK,
            {
                "id": task_id,
                "key_id": key_id,
                "status": TaskStatus.PENDING.value,
                "progress": 0,
                "spec": spec.to_json(),
                "seed": seed,
                "credits": millicredits,
                "estimated_time": estimated_time,
                "created_at": now,
                "attempts": 0,
                "lease_epoch": 0,
                "result_deleted": False,
            },
        ).one()
        self._announce(conn)
        return row

    @staticmethod
    def in_flight(key_id: int) -> sa.Select[int]:
        """The count of the key's pending and processing tasks, from the tasks themselves
        (what ``api_keys.in_flight`` keeps without counting)."""
        return sa.select(sa.func.count()).where(tasks.c.key_id == key_id, sa.text(ACTIVE_PREDICATE))

    def _idempotent(
        self, conn: sa.Connection, key_id: int, request: IdempotencyRequest, now: float
    ) -> str | None:
        """The task an earlier submit with ``request``'s key made, if any (an expired
        record is deleted); raises ``IdempotencyMismatch`` when that used another body."""
        params = {"key_id": key_id, "idem_key": request.key}
        row = conn.execute(_IDEMPOTENCY_RECORD, params).one_or_none()
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

    @retry_disconnect
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

    @retry_disconnect
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
        clock = self._clock(now)
        pending = tasks.c.status == TaskStatus.PENDING.value
        oldest = self.db.for_update(
            sa.select(tasks.c.id).where(pending).order_by(tasks.c.created_at, tasks.c.id).limit(1),
            skip_locked=True,
        ).scalar_subquery()
        # One statement: the subquery locks the oldest pending row no one else holds (SKIP
        # LOCKED on PostgreSQL; SQLite's write lock serialises claims), the update takes it.
        with self.db.write() as conn:
            if worker_id is not None:
                live = sa.select(worker_tokens.c.id).where(
                    worker_tokens.c.id == worker_id, worker_tokens.c.revoked_at.is_(None)
                )
                if not self.db.is_sqlite:
                    live = live.with_for_update(read=True)
                if conn.execute(live).one_or_none() is None:
                    raise AuthenticationFailed(
                        "Authentication failed: this worker token is unknown or revoked"
                    )
            found = conn.execute(
                tasks.update()
                .where(tasks.c.id == oldest, pending)
                .values(
                    status=TaskStatus.PROCESSING.value,
                    lease_owner=owner,
                    lease_worker=worker_id,
                    claimed_at=clock,
                    lease_expires_at=clock + lease_s,
                    lease_epoch=tasks.c.lease_epoch + 1,
                    attempts=tasks.c.attempts + 1,
                    started_at=sa.func.coalesce(tasks.c.started_at, clock),
                )
                .returning(*tasks.c)
            ).one_or_none()
        if found is None:
            return None
        row = TaskRow.from_row(found)
        return Claim(task=row, owner=owner, epoch=row.lease_epoch)

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
    # (``StoreTaskSource.record_result``).

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
        held = self._held(task_id, epoch, worker_id)
        if max_run_s is not None:
            held = sa.and_(held, tasks.c.claimed_at + max_run_s > self._clock(now))
        with self.db.write() as conn:
            result = conn.execute(
                tasks.update()
                .where(held)
                .values(
                    lease_expires_at=self._clock(now) + lease_s,
                    progress=sa.case(
                        (tasks.c.progress < progress, progress), else_=tasks.c.progress
                    ),
                )
            )
        return result.rowcount == 1

    @retry_repeatable
    def complete(
        self,
        task_id: str,
        epoch: int,
        *,
        result_key: str,
        ttl_s: float,
        final_millicredits: int | None = None,
        info: dict[str, Any] | None = None,
        now: float | None = None,
        worker_id: int | None = None,
    ) -> bool:
        """Record the result; a smaller final price than the hold is refunded in the same step.

        False (and nothing written) when the lease is no longer held: the caller's file is
        nobody's result then.
        """
        now = time.time() if now is None else now
        with self.db.write() as conn:
            row = self._lock_held(conn, task_id, epoch, worker_id)
            if row is None:
                return False
            held = int(row._mapping["credits"])
            final = held if final_millicredits is None else min(held, final_millicredits)
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
        with self.db.write() as conn:
            row = self._lock_held(conn, task_id, epoch, worker_id)
            if row is None:
                return False
            if retry and int(row._mapping["attempts"]) < max_attempts:
                self._requeue(conn, row)
            else:
                self._end(conn, row, TaskStatus.FAILED, now, error=message)
        return True

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
        with self.db.write() as conn:
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
        with self.db.write() as conn:
            conn.execute(tasks.update().where(tasks.c.id == task_id).values(result_deleted=True))

    # -- shared steps -------------------------------------------------------------------------

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
        self._announce(conn)

    def _announce(self, conn: sa.Connection) -> None:
        """PostgreSQL: wake workers in other processes (sent when the transaction commits)."""
        if not self.db.is_sqlite:
            conn.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL})

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
        for hook in self.end_hooks:
            # A hook that fails (an outbox row the database refuses) is undone alone, in its
            # savepoint: the task still ends, and is refunded, in this transaction.
            try:
                with conn.begin_nested():
                    hook(conn, m["id"], status)
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated:
                    raise  # not the hook's fault: the whole transaction is gone
                log.exception("an end hook of %s failed; the task ends without it", m["id"])
                self.report_error("end_hook", m["id"])
            except Exception:
                log.exception("an end hook of %s failed; the task ends without it", m["id"])
                self.report_error("end_hook", m["id"])
