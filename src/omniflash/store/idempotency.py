"""Idempotency keys on submit: the same key and body within 24 h replays the first task.

A request first *reserves* its key in a short transaction of its own, so that a second
request arriving while the first is still being handled sees the reservation (409)
rather than waiting on a lock.  A reservation left behind by a crashed process goes
stale after ``STALE_S`` and may be taken over.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from omniflash.errors import Conflict, IdempotencyMismatch
from omniflash.store.db import Database
from omniflash.store.schema import idempotency

__all__ = ["IdempotencyStore"]

TTL_S = 24 * 3600
STALE_S = 120


class IdempotencyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def reserve(
        self, key_id: int, idem_key: str, body_hash: str, now: float | None = None
    ) -> str | None:
        """Returns the task id to replay, or ``None`` when this request should go ahead."""
        now = time.time() if now is None else now
        where = sa.and_(idempotency.c.key_id == key_id, idempotency.c.idem_key == idem_key)
        try:
            with self.db.write() as conn:
                row = conn.execute(sa.select(idempotency).where(where)).one_or_none()
                if row is not None and row.created_at < now - TTL_S:
                    conn.execute(idempotency.delete().where(where))
                    row = None
                if row is None:
                    conn.execute(
                        idempotency.insert().values(
                            key_id=key_id, idem_key=idem_key, body_hash=body_hash, created_at=now
                        )
                    )
                    return None
                if row.body_hash != body_hash:
                    raise IdempotencyMismatch(
                        "This Idempotency-Key was already used with a different request body; "
                        "use a new key for a new request"
                    )
                if row.task_id is not None:
                    return str(row.task_id)
                if row.created_at > now - STALE_S:
                    raise Conflict(
                        "A request with this Idempotency-Key is still being handled; "
                        "retry in a moment"
                    )
                conn.execute(idempotency.update().where(where).values(created_at=now))
                return None
        except sa.exc.IntegrityError as exc:
            raise Conflict(
                "A request with this Idempotency-Key is still being handled; retry in a moment"
            ) from exc

    def attach(self, key_id: int, idem_key: str, task_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                idempotency.update()
                .where(idempotency.c.key_id == key_id, idempotency.c.idem_key == idem_key)
                .values(task_id=task_id)
            )

    def release(self, key_id: int, idem_key: str) -> None:
        """Forget a reservation whose request failed, so the same key can be used again."""
        with self.db.write() as conn:
            conn.execute(
                idempotency.delete().where(
                    idempotency.c.key_id == key_id,
                    idempotency.c.idem_key == idem_key,
                    idempotency.c.task_id.is_(None),
                )
            )
