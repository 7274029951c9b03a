"""The submit's statements, built once: building a statement costs more than running it.

SQLite's submit runs the first six a statement at a time; PostgreSQL's is the one
statement ``SUBMIT_IN_ONE_STATEMENT``.
"""

from __future__ import annotations

import sqlalchemy as sa

from omniflash.store.keys import COUNT_REQUEST
from omniflash.store.schema import api_keys, idempotency, ledger, tasks

__all__ = [
    "CHARGE",
    "COUNT_AND_LOCK",
    "IDEMPOTENCY_RECORD",
    "IDEMPOTENCY_TTL_S",
    "INSERT_IDEMPOTENCY",
    "INSERT_LEDGER",
    "INSERT_TASK",
    "SUBMIT_IN_ONE_STATEMENT",
]

IDEMPOTENCY_TTL_S = 24 * 3600

# SQLite's submit, a statement at a time inside ``BEGIN IMMEDIATE``; built once: building a
# statement costs more than running it.
COUNT_AND_LOCK = COUNT_REQUEST.returning(
    api_keys.c.rate_hits,
    api_keys.c.rpm,
    api_keys.c.balance,
    api_keys.c.max_concurrent,
    api_keys.c.in_flight,
    api_keys.c.revoked_at,
)
CHARGE = (
    api_keys.update()
    .where(api_keys.c.id == sa.bindparam("key_id"))
    .values(
        balance=api_keys.c.balance - sa.bindparam("amount"),
        in_flight=api_keys.c.in_flight + 1,
    )
)
INSERT_LEDGER = ledger.insert()
INSERT_IDEMPOTENCY = idempotency.insert()
INSERT_TASK = tasks.insert().returning(*tasks.c)
IDEMPOTENCY_RECORD = sa.select(idempotency).where(
    idempotency.c.key_id == sa.bindparam("key_id"),
    idempotency.c.idem_key == sa.bindparam("idem_key"),
)
# PostgreSQL: the whole submit as one statement that commits by itself.  ``old`` locks the
# key row and reads it (FOR UPDATE waits for, then reads, the latest version); ``prior`` is
# an unexpired record of the idempotency key; ``verdict`` decides.  The key row is counted
# (``:count`` is 0 on a second look, so a request counts once) unless over ``rpm``, as a
# refused transaction would not have been; with a yes, the idempotency key is recorded
# (over an expired record) and only if that took (``go``) is the key charged and the
# task queued; the workers are notified at commit.  A record another submit committed
# while this one waited for the lock is not in this statement's snapshot: ``remembered``
# then takes nothing and no task is made, and ``submit`` looks again.
SUBMIT_IN_ONE_STATEMENT = sa.text(
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
