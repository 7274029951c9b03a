"""The webhook outbox: rows written when a task ends, claimed and settled by the senders.

A row is one event (``task.completed``, ``task.failed``, ``task.cancelled``) for one
``callback_url``; its id is the ``webhook-id`` every attempt carries.  The row is written
by a ``TaskStore`` end hook, in the transaction that ends the task, so a task that ended
always has its webhook queued, and one that did not, never.

An attempt is claimed under a lease: the claim picks due rows (``FOR UPDATE SKIP LOCKED``
on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises claimers), counts the attempt and
sets the lease in one transaction, so each attempt number belongs to exactly one sender.
The sender settles the attempt (delivered, retry later, or give up) with an UPDATE that
matches its own lease and attempt number and must change one row.  A sender that dies
mid-attempt leaves its lease to expire; another sender then makes the next attempt, with
the same ``webhook-id`` (at least once).  Times are the database's clock.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from omniflash.ids import ulid
from omniflash.store.db import Database
from omniflash.store.schema import webhook_outbox

__all__ = ["Delivery", "Outbox", "retry_delay"]

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One claimed attempt of one outbox row."""

    id: str
    task_id: str
    key_id: int
    url: str
    event: str
    payload: bytes
    attempt: int
    """1 for the first attempt; counted at claim."""
    created_at: float
    owner: str


def retry_delay(delays: Sequence[float], attempt: int) -> float:
    """Seconds before attempt ``attempt + 1``; the last delay repeats.

    >>> [retry_delay([5, 30], n) for n in (1, 2, 3)]
    [5, 30, 30]
    """
    return delays[min(attempt, len(delays)) - 1]


class Outbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def enqueue(
        self,
        conn: sa.Connection,
        *,
        task_id: str,
        key_id: int,
        url: str,
        event: str,
        body: dict[str, Any],
    ) -> str:
        """Queue an event inside the caller's transaction; returns its ``webhook-id``."""
        msg_id = "msg_" + ulid()
        clock = self.db.clock()
        conn.execute(
            webhook_outbox.insert().values(
                id=msg_id,
                task_id=task_id,
                key_id=key_id,
                url=url,
                event=event,
                payload=json.dumps(body, separators=(",", ":")),
                state=PENDING,
                attempts=0,
                created_at=clock,
                next_attempt_at=clock,
            )
        )
        return msg_id

    def claim(self, owner: str, lease_s: float, limit: int = 8) -> list[Delivery]:
        """Take up to ``limit`` due attempts under a lease of ``lease_s`` seconds."""
        o = webhook_outbox.c
        clock = self.db.clock()
        with self.db.write() as conn:
            due = (
                sa.select(o.id)
                .where(
                    o.state == PENDING,
                    o.next_attempt_at <= clock,
                    sa.or_(o.lease_expires_at.is_(None), o.lease_expires_at < clock),
                )
                .order_by(o.next_attempt_at, o.id)
                .limit(limit)
            )
            ids = list(conn.execute(self.db.for_update(due, skip_locked=True)).scalars())
            if not ids:
                return []
            taken = conn.execute(
                webhook_outbox.update()
                .where(o.id.in_(ids))
                .values(
                    lease_owner=owner, lease_expires_at=clock + lease_s, attempts=o.attempts + 1
                )
            ).rowcount
            if taken != len(ids):  # the rows are locked and due: this cannot happen
                raise RuntimeError(f"outbox claim changed {taken} of {len(ids)} rows")
            rows = conn.execute(sa.select(webhook_outbox).where(o.id.in_(ids))).all()
        return [
            Delivery(
                id=r.id,
                task_id=r.task_id,
                key_id=r.key_id,
                url=r.url,
                event=r.event,
                payload=r.payload.encode(),
                attempt=r.attempts,
                created_at=r.created_at,
                owner=owner,
            )
            for r in rows
        ]

    def _settle(self, delivery: Delivery, values: dict[str, Any]) -> bool:
        o = webhook_outbox.c
        with self.db.write() as conn:
            changed = conn.execute(
                webhook_outbox.update()
                .where(
                    o.id == delivery.id,
                    o.state == PENDING,
                    o.lease_owner == delivery.owner,
                    o.attempts == delivery.attempt,
                )
                .values(lease_owner=None, lease_expires_at=None, **values)
            ).rowcount
        # 0: the lease ran out and another sender took the next attempt; its word counts.
        return changed == 1

    def delivered(self, delivery: Delivery, status: int) -> bool:
        return self._settle(
            delivery, {"state": DELIVERED, "last_status": status, "delivered_at": self.db.clock()}
        )

    def failed_attempt(
        self,
        delivery: Delivery,
        *,
        status: int | None,
        error: str,
        delays: Sequence[float],
        retry_for_s: float,
        give_up: bool = False,
    ) -> str:
        """Record a failed attempt: retry after the next delay, or give up for good.

        The row gives up when ``give_up`` or when the next attempt would start more than
        ``retry_for_s`` after the event.  Returns ``"retry"``, ``"gave_up"``, or ``"lost"``
        when the lease ran out meanwhile (the attempt is another sender's now).
        """
        o = webhook_outbox.c
        next_at = self.db.clock() + retry_delay(delays, delivery.attempt)
        final = sa.true() if give_up else next_at > o.created_at + retry_for_s
        settled = self._settle(
            delivery,
            {
                "state": sa.case((final, FAILED), else_=PENDING),
                "next_attempt_at": next_at,
                "last_status": status,
                "last_error": error[:1000],
            },
        )
        if not settled:
            return "lost"
        with self.db.read() as conn:
            state = conn.execute(sa.select(o.state).where(o.id == delivery.id)).scalar_one()
        return "gave_up" if state == FAILED else "retry"

    def purge(self, older_than_s: float) -> int:
        """Delete settled rows (delivered or given up) older than ``older_than_s``."""
        o = webhook_outbox.c
        with self.db.write() as conn:
            return int(
                conn.execute(
                    webhook_outbox.delete().where(
                        o.state != PENDING, o.created_at < self.db.clock() - older_than_s
                    )
                ).rowcount
            )

    def get(self, msg_id: str) -> dict[str, Any] | None:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(webhook_outbox).where(webhook_outbox.c.id == msg_id)
            ).one_or_none()
        return dict(row._mapping) if row is not None else None

    def for_task(self, task_id: str) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(webhook_outbox).where(webhook_outbox.c.task_id == task_id)
            ).all()
        return [dict(r._mapping) for r in rows]
