"""PostgreSQL: the lease queue's hot writes, each one statement (a chain of data-modifying
CTEs), built once: building a statement costs more than running it.

A worker's claim, heartbeat and finish write the task row, its event and (at the end)
the key row together.  SQLite runs them a statement at a time inside ``BEGIN IMMEDIATE``
(``store.queue``); here each is one round trip, and the row locks it takes last no longer
than its transaction.  The lock order is the one ``store.tasks`` documents: the task row
first (the claim's ``SKIP LOCKED`` subquery, the finish's ``locked``), then the key row,
which ``settled`` reaches only through the task row the statement already holds.

Parameters are named ``p_…``: SQLAlchemy takes a parameter named as a column of a table
an INSERT or UPDATE writes for that column's value.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from omniflash.store.events import EVENTS_CHANNEL
from omniflash.store.schema import api_keys, ledger, task_events, tasks
from omniflash.store.task_rows import TaskStatus

__all__ = ["CLAIM", "COMPLETE", "HEARTBEAT", "TASK_SPEC", "claim_values"]


def claim_values(status: Any, owner: Any, worker: Any, clock: Any, lease_s: Any) -> dict[str, Any]:
    """What a claim writes to the task row it takes, in both forms (here and
    ``store.lease_steps``): the lease, the next epoch, one more attempt."""
    return {
        "status": status,
        "lease_owner": owner,
        "lease_worker": worker,
        "claimed_at": clock,
        "lease_expires_at": clock + lease_s,
        "lease_epoch": tasks.c.lease_epoch + 1,
        "attempts": tasks.c.attempts + 1,
        "started_at": sa.func.coalesce(tasks.c.started_at, clock),
    }


def _inline(value: str | int) -> sa.ColumnElement[Any]:
    """A constant written into the statement's text, not sent as a parameter."""
    return sa.literal_column(repr(value) if isinstance(value, str) else str(value))


_CLOCK = sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)
_at = sa.cast(sa.bindparam("p_at", type_=sa.Float), sa.Float)  # typed where it is null
_clock = sa.func.coalesce(_at, _CLOCK)
"""The database's time, or ``p_at`` where a test sets the clock."""
_now = sa.bindparam("p_now", type_=sa.Float)
"""The process's wall clock: an event's ``created_at``, a finish's ``completed_at``."""
_task_id = sa.bindparam("p_task", type_=sa.String)
_epoch = sa.bindparam("p_epoch", type_=sa.Integer)
_worker = sa.bindparam("p_worker", type_=sa.Integer)
_lease_s = sa.bindparam("p_lease_s", type_=sa.Float)
_EVENT_COLUMNS = ["task_id", "key_id", "kind", "data", "created_at"]
_PROCESSING = TaskStatus.PROCESSING.value


def _notify(key_id: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """Tell the event streams of the key (delivered when the transaction commits)."""
    return sa.func.pg_notify(_inline(EVENTS_CHANNEL), sa.cast(key_id, sa.Text))


def _held() -> sa.ColumnElement[bool]:
    """The task under the lease ``p_epoch``; with ``p_worker``, only while that token holds it."""
    return sa.and_(
        tasks.c.id == _task_id,
        tasks.c.status == _inline(_PROCESSING),
        tasks.c.lease_epoch == _epoch,
        sa.or_(_worker.is_(None), tasks.c.lease_worker == _worker),
    )


def _claim() -> sa.Select[Any]:
    """The oldest pending task no one else has locked, leased to ``p_owner``; its ``status``
    event.  No row when the queue is empty."""
    pending = tasks.c.status == _inline(TaskStatus.PENDING.value)
    oldest = (
        sa.select(tasks.c.id)
        .where(pending)
        .order_by(tasks.c.created_at, tasks.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    claimed = (
        tasks.update()
        .where(tasks.c.id == oldest, pending)
        .values(
            claim_values(
                _inline(_PROCESSING),
                sa.bindparam("p_owner", type_=sa.String),
                _worker,
                _clock,
                _lease_s,
            )
        )
        .returning(*tasks.c)
        .cte("claimed")
    )
    event = (
        task_events.insert()
        .from_select(
            _EVENT_COLUMNS,
            sa.select(
                claimed.c.id,
                claimed.c.key_id,
                _inline("status"),
                sa.func.concat(
                    _inline(f'{{"status":"{_PROCESSING}","progress":'),
                    claimed.c.progress,
                    _inline("}"),
                ),
                _now,
            ),
        )
        .cte("claimed_event")
    )
    return sa.select(claimed, _notify(claimed.c.key_id).label("k_notified")).add_cte(event)


def _heartbeat() -> sa.Select[Any]:
    """Renew the lease and raise its progress to ``p_progress``; a ``progress`` event when
    it rose.  One row (``was``: the progress before) while the lease is held, else none.

    With ``p_max_run``, a lease claimed longer ago than that is not renewed.
    """
    progress = sa.bindparam("p_progress", type_=sa.Integer)
    max_run = sa.cast(sa.bindparam("p_max_run", type_=sa.Float), sa.Float)
    before = sa.select(tasks.c.id, tasks.c.progress.label("was")).where(tasks.c.id == _task_id)
    before_cte = before.cte("before")
    beat = (
        tasks.update()
        .where(
            _held(),
            tasks.c.id == before_cte.c.id,
            sa.or_(max_run.is_(None), tasks.c.claimed_at + max_run > _clock),
        )
        .values(
            lease_expires_at=_clock + _lease_s,
            progress=sa.func.greatest(tasks.c.progress, progress),
        )
        .returning(
            tasks.c.id,
            tasks.c.key_id,
            before_cte.c.was,
            (_clock - tasks.c.claimed_at).label("elapsed"),
        )
        .cte("beat")
    )
    # Seconds left at this pace: the time so far, scaled by what remains (as ``lease_steps._eta``).
    eta = sa.case(
        (
            sa.and_(progress > 0, beat.c.elapsed.is_not(None)),
            sa.cast(
                sa.func.greatest(0, sa.func.round(beat.c.elapsed * (100 - progress) / progress)),
                sa.BigInteger,
            ),
        )
    )
    rose = beat.c.was < progress
    event = (
        task_events.insert()
        .from_select(
            _EVENT_COLUMNS,
            sa.select(
                beat.c.id,
                beat.c.key_id,
                _inline("progress"),
                sa.func.concat(
                    _inline('{"progress":'),
                    progress,
                    _inline(',"eta_s":'),
                    sa.func.coalesce(sa.cast(eta, sa.Text), _inline("null")),
                    _inline("}"),
                ),
                _now,
            ).where(rose),
        )
        .cte("beat_event")
    )
    return sa.select(
        beat.c.was, sa.case((rose, _notify(beat.c.key_id))).label("k_notified")
    ).add_cte(event)


def _complete() -> sa.Select[Any]:
    """End the task under the lease with its result: priced at ``p_price`` (at most what was
    held; the hold stands when it is null), the difference settled to the key with its
    ledger row, one task fewer in flight, the ``end`` event.  One row, the task as it ended
    (``k_held``: what it held; ``k_keys``: key rows updated, which must be 1), or none when
    the lease is not held."""
    price = sa.bindparam("p_price", type_=sa.BigInteger)
    locked = sa.select(tasks.c.id, tasks.c.credits.label("k_held")).where(_held()).with_for_update()
    locked_cte = locked.cte("locked")
    done = (
        tasks.update()
        .where(_held(), tasks.c.id == locked_cte.c.id)
        .values(
            status=_inline(TaskStatus.COMPLETED.value),
            progress=_inline(100),
            completed_at=_now,
            result_key=sa.bindparam("p_result_key", type_=sa.String),
            result_expires_at=_now + sa.bindparam("p_ttl_s", type_=sa.Float),
            credits=sa.func.least(
                locked_cte.c.k_held, sa.func.coalesce(price, locked_cte.c.k_held)
            ),
            info=sa.bindparam("p_info", type_=sa.Text),
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(*tasks.c, locked_cte.c.k_held)
        .cte("done")
    )
    settled = (
        api_keys.update()
        .where(api_keys.c.id == done.c.key_id)
        .values(
            balance=api_keys.c.balance + (done.c.k_held - done.c.credits),
            in_flight=api_keys.c.in_flight - 1,
        )
        .returning(api_keys.c.id)
        .cte("settled")
    )
    settle = (
        ledger.insert()
        .from_select(
            ["key_id", "task_id", "delta", "reason", "created_at"],
            sa.select(
                done.c.key_id,
                done.c.id,
                done.c.k_held - done.c.credits,
                _inline("settle"),
                _now,
            ).where(done.c.k_held > done.c.credits),
        )
        .cte("settle")
    )
    event = (
        task_events.insert()
        .from_select(
            _EVENT_COLUMNS,
            sa.select(
                done.c.id,
                done.c.key_id,
                _inline("end"),
                _inline(f'{{"status":"{TaskStatus.COMPLETED.value}"}}'),
                _now,
            ),
        )
        .cte("end_event")
    )
    keys = sa.select(sa.func.count()).select_from(settled).scalar_subquery()
    return sa.select(
        done, keys.label("k_keys"), _notify(done.c.key_id).label("k_notified")
    ).add_cte(settle, event)


CLAIM = _claim()
"""Parameters: ``p_owner``, ``p_worker`` (or None), ``p_lease_s``, ``p_at`` (or None),
``p_now``."""
HEARTBEAT = _heartbeat()
"""Parameters: ``p_task``, ``p_epoch``, ``p_worker``, ``p_progress``, ``p_lease_s``,
``p_max_run`` (or None), ``p_at`` (or None), ``p_now``."""
COMPLETE = _complete()
"""Parameters: ``p_task``, ``p_epoch``, ``p_worker``, ``p_price`` (or None),
``p_result_key``, ``p_ttl_s``, ``p_info``, ``p_now``."""
TASK_SPEC = sa.select(tasks.c.spec).where(tasks.c.id == _task_id)
"""A task's spec (it never changes after the submit): parameter ``p_task``."""
