"""The submit's statements, SQLAlchemy Core like every query of the store, built once:
building a statement costs more than running it.

Both forms of the submit take the same parameters (``submit_params``) and write the same
rows from them: the task (``NEW_TASK``), its charge in the ledger (``NEW_CHARGE``) and
its idempotency record (``NEW_RECORD``).  SQLite runs them a statement at a time inside
``BEGIN IMMEDIATE``; PostgreSQL runs the whole submit as ``SUBMIT_IN_ONE_STATEMENT``, a
chain of data-modifying CTEs, which SQLite does not have.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from omniflash.store.keys import COUNT_REQUEST, rate_window
from omniflash.store.schema import api_keys, idempotency, ledger, tasks
from omniflash.store.task_rows import NOTIFY_CHANNEL, IdempotencyRequest, TaskStatus

__all__ = [
    "CHARGE",
    "COUNT_AND_LOCK",
    "IDEMPOTENCY_RECORD",
    "IDEMPOTENCY_TTL_S",
    "INSERT_IDEMPOTENCY",
    "INSERT_LEDGER",
    "INSERT_TASK",
    "SUBMIT_IN_ONE_STATEMENT",
    "submit_params",
]

IDEMPOTENCY_TTL_S = 24 * 3600


def submit_params(
    key_id: int,
    task_id: str,
    spec_json: str,
    *,
    millicredits: int,
    estimated_time: int,
    seed: int,
    idempotency_key: IdempotencyRequest | None,
    now: float,
) -> dict[str, Any]:
    """The parameters of either form of the submit.

    None is named as a column of the tables the submit writes: SQLAlchemy would take a
    parameter named so for that column's value in every INSERT and UPDATE of the submit.
    """
    return {
        "key": key_id,
        "window": rate_window(now),
        "count": 1,
        "amount": millicredits,
        "task": task_id,
        "task_spec": spec_json,
        "task_seed": seed,
        "task_eta": estimated_time,
        "now": now,
        "idem": idempotency_key.key if idempotency_key else None,
        "idem_hash": idempotency_key.body_hash if idempotency_key else None,
        "fresh_after": now - IDEMPOTENCY_TTL_S,
        "channel": NOTIFY_CHANNEL,
    }


def _inline(value: str | int) -> sa.ColumnElement[Any]:
    """A constant written into the statement's text, not sent as a parameter."""
    return sa.literal_column(repr(value) if isinstance(value, str) else str(value))


_key_id = sa.bindparam("key", type_=sa.Integer)
_amount = sa.bindparam("amount", type_=sa.BigInteger)
_now = sa.bindparam("now", type_=sa.Float)
_task_id = sa.bindparam("task", type_=sa.String)
_idem_key = sa.bindparam("idem", type_=sa.Text)

NEW_TASK: dict[str, sa.ColumnElement[Any]] = {
    "id": _task_id,
    "key_id": _key_id,
    "status": _inline(TaskStatus.PENDING.value),
    "progress": _inline(0),
    "spec": sa.bindparam("task_spec", type_=sa.Text),
    "seed": sa.bindparam("task_seed", type_=sa.BigInteger),
    "credits": _amount,
    "estimated_time": sa.bindparam("task_eta", type_=sa.Integer),
    "created_at": _now,
    "attempts": _inline(0),
    "lease_epoch": _inline(0),
    "result_deleted": sa.false(),
}
"""A new pending task, from the submit's parameters."""
NEW_CHARGE: dict[str, sa.ColumnElement[Any]] = {
    "key_id": _key_id,
    "task_id": _task_id,
    "delta": -_amount,
    "reason": _inline("charge"),
    "created_at": _now,
}
"""The ledger's entry for the task's charge."""
NEW_RECORD: dict[str, sa.ColumnElement[Any]] = {
    "key_id": _key_id,
    "idem_key": _idem_key,
    "body_hash": sa.bindparam("idem_hash", type_=sa.String),
    "task_id": _task_id,
    "created_at": _now,
}
"""The idempotency key's record: this body made this task."""

# SQLite's submit, a statement at a time.
COUNT_AND_LOCK = COUNT_REQUEST.returning(  # parameters ``key_id``, ``window``
    api_keys.c.rate_hits,
    api_keys.c.rpm,
    api_keys.c.balance,
    api_keys.c.max_concurrent,
    api_keys.c.in_flight,
    api_keys.c.revoked_at,
)
CHARGE = (
    api_keys.update()
    .where(api_keys.c.id == _key_id)
    .values(balance=api_keys.c.balance - _amount, in_flight=api_keys.c.in_flight + 1)
)
INSERT_LEDGER = ledger.insert().values(NEW_CHARGE)
INSERT_IDEMPOTENCY = idempotency.insert().values(NEW_RECORD)
INSERT_TASK = tasks.insert().values(NEW_TASK).returning(*tasks.c)
IDEMPOTENCY_RECORD = sa.select(idempotency).where(
    idempotency.c.key_id == _key_id, idempotency.c.idem_key == _idem_key
)
"""The idempotency key's record, expired or not (SQLite deletes an expired one)."""


def _submit_in_one_statement() -> sa.Select[Any]:
    """PostgreSQL: the whole submit as one statement that commits by itself.

    ``old`` locks the key row and reads it (FOR UPDATE waits for, then reads, the latest
    version); ``prior`` is an unexpired record of the idempotency key; ``verdict``
    decides.  The key row is counted (``count`` is 0 on a second look, so a request
    counts once) unless over ``rpm``, as a refused transaction would not have been; with
    a yes, the idempotency key is recorded (over an expired record) and only if that
    took (``go``) is the key charged and the task queued; the workers are notified at
    commit.  A record another submit committed while this one waited for the lock is not
    in this statement's snapshot: ``remembered`` then takes nothing and no task is made,
    and ``submit`` looks again.
    """
    k, i = api_keys.c, idempotency.c
    count = sa.bindparam("count", type_=sa.Integer)
    window = sa.bindparam("window", type_=sa.BigInteger)
    fresh_after = sa.bindparam("fresh_after", type_=sa.Float)
    old = (
        sa.select(
            k.id,
            k.rpm,
            k.max_concurrent,
            k.balance,
            k.in_flight,
            k.revoked_at,
            sa.case((k.rate_window == window, k.rate_hits + count), else_=count).label("hits"),
        )
        .where(k.id == _key_id)
        .with_for_update()
        .cte("old")
    )
    prior = (
        sa.select(i.task_id, i.body_hash)
        .where(i.key_id == _key_id, i.idem_key == _idem_key, i.created_at >= fresh_after)
        .cte("prior")
    )
    verdict = (
        sa.select(
            old,
            prior.c.task_id.label("prior_task"),
            prior.c.body_hash.label("prior_hash"),
            sa.and_(
                prior.c.task_id.is_(None),
                old.c.revoked_at.is_(None),
                old.c.hits <= old.c.rpm,
                old.c.in_flight < old.c.max_concurrent,
                old.c.balance >= _amount,
            ).label("ok"),
        )
        .select_from(old.outerjoin(prior, sa.true()))
        .cte("verdict")
    )
    record = postgresql.insert(idempotency).from_select(
        list(NEW_RECORD),
        sa.select(*NEW_RECORD.values()).where(verdict.c.ok, _idem_key.is_not(None)),
    )
    remembered = (
        record.on_conflict_do_update(
            index_elements=[i.key_id, i.idem_key],
            set_={
                "body_hash": record.excluded.body_hash,
                "task_id": record.excluded.task_id,
                "created_at": record.excluded.created_at,
            },
            where=i.created_at < fresh_after,
        )
        .returning(i.task_id)
        .cte("remembered")
    )
    go = (
        sa.select(verdict.c.id)
        .where(
            verdict.c.ok,
            sa.or_(_idem_key.is_(None), sa.exists(sa.select(remembered.c.task_id))),
        )
        .cte("go")
    )
    went = sa.exists(sa.select(go.c.id))
    counted = (
        api_keys.update()
        .where(k.id == verdict.c.id, verdict.c.hits <= verdict.c.rpm)
        .values(
            rate_window=window,
            rate_hits=verdict.c.hits,
            balance=k.balance - sa.case((went, _amount), else_=_inline(0)),
            in_flight=k.in_flight + sa.case((went, _inline(1)), else_=_inline(0)),
        )
        .cte("counted")
    )
    charged = (
        ledger.insert()
        .from_select(list(NEW_CHARGE), sa.select(*NEW_CHARGE.values()).select_from(go))
        .cte("charged")
    )
    queued = (
        tasks.insert()
        .from_select(list(NEW_TASK), sa.select(*NEW_TASK.values()).select_from(go))
        .returning(*tasks.c)
        .cte("queued")
    )
    v = verdict.c
    return (
        sa.select(
            v.ok.label("k_ok"),
            v.hits.label("k_hits"),
            v.rpm.label("k_rpm"),
            v.max_concurrent.label("k_max_concurrent"),
            v.in_flight.label("k_in_flight"),
            v.balance.label("k_balance"),
            v.revoked_at.label("k_revoked_at"),
            v.prior_task.label("k_prior_task"),
            v.prior_hash.label("k_prior_hash"),
            queued,
            sa.case(
                (
                    queued.c.id.is_not(None),
                    sa.func.pg_notify(sa.bindparam("channel", type_=sa.Text), _inline("")),
                )
            ).label("k_notified"),
        )
        .select_from(verdict.outerjoin(queued, sa.true()))
        .add_cte(counted, charged)
    )


SUBMIT_IN_ONE_STATEMENT = _submit_in_one_statement()
