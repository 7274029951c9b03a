"""Remote workers' tokens: created by an operator, stored hashed, revocable by name.

A worker token only opens the API's ``/worker/v1/`` endpoints, and an API key only the
public API: the two live in different tables, so neither can stand in for the other.
A task's lease names the token that claimed it (``tasks.lease_worker``); revoking a
token hands its leases back to the queue in the revoke's own transaction.
"""

from __future__ import annotations

import dataclasses
import time

import sqlalchemy as sa

from omniflash.errors import Conflict, NotFound
from omniflash.ids import hash_key, new_worker_token
from omniflash.store.db import Database, retry_disconnect, retry_repeatable
from omniflash.store.events import record
from omniflash.store.schema import tasks, worker_tokens
from omniflash.store.task_ends import NOTIFY
from omniflash.store.task_rows import NOTIFY_CHANNEL

__all__ = ["WorkerInfo", "WorkerStore"]

SEEN_EVERY_S = 30.0
"""``last_seen_at`` is written at most this often per worker, not on every request."""


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    id: int
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None
    last_seen_at: float | None

    @classmethod
    def from_row(cls, row: sa.Row[tuple[object, ...]]) -> WorkerInfo:
        m = row._mapping
        return cls(
            id=m["id"],
            name=m["name"],
            prefix=m["prefix"],
            created_at=m["created_at"],
            revoked_at=m["revoked_at"],
            last_seen_at=m["last_seen_at"],
        )


class WorkerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str) -> tuple[str, WorkerInfo]:
        """A new token for worker ``name``; returns the plaintext (shown once) and its record."""
        if not name or len(name) > 100:
            raise ValueError("a worker name is 1 to 100 characters")
        token = new_worker_token()
        try:
            with self.db.write() as conn:
                worker_id = conn.execute(
                    worker_tokens.insert()
                    .values(
                        name=name,
                        prefix=token[:11],
                        token_hash=hash_key(token),
                        created_at=time.time(),
                    )
                    .returning(worker_tokens.c.id)
                ).scalar_one()
                row = conn.execute(
                    sa.select(worker_tokens).where(worker_tokens.c.id == worker_id)
                ).one()
        except sa.exc.IntegrityError as exc:
            raise Conflict(
                f"a worker named {name!r} exists; revoke it or pick another name"
            ) from exc
        return token, WorkerInfo.from_row(row)

    @retry_repeatable  # a read, and a last-seen time that may be written twice
    def authenticate(self, token: str, now: float | None = None) -> WorkerInfo | None:
        now = time.time() if now is None else now
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(worker_tokens).where(
                    worker_tokens.c.token_hash == hash_key(token),
                    worker_tokens.c.revoked_at.is_(None),
                )
            ).one_or_none()
        if row is None:
            return None
        info = WorkerInfo.from_row(row)
        if info.last_seen_at is None or info.last_seen_at < now - SEEN_EVERY_S:
            with self.db.write() as conn:
                conn.execute(
                    worker_tokens.update()
                    .where(worker_tokens.c.id == info.id)
                    .values(last_seen_at=now)
                )
        return info

    @retry_disconnect
    def is_active(self, worker_id: int) -> bool:
        """Whether the token is still valid (not revoked): read fresh, never cached."""
        with self.db.read() as conn:
            return (
                conn.execute(
                    sa.select(worker_tokens.c.id).where(
                        worker_tokens.c.id == worker_id, worker_tokens.c.revoked_at.is_(None)
                    )
                ).one_or_none()
                is not None
            )

    @retry_disconnect
    def pending_tasks(self, limit: int) -> int:
        """How many tasks wait for a worker, counted up to ``limit`` (the index on
        ``status`` answers it): the long polls' safety net for a missed ``NOTIFY``."""
        waiting = (
            sa.select(tasks.c.id).where(tasks.c.status == "pending").limit(max(1, limit)).subquery()
        )
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(waiting)).scalar_one())

    def seen_since(self, since: float) -> int:
        """The active tokens that made a request since ``since`` (as ``SEEN_EVERY_S`` allows)."""
        with self.db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(
                        worker_tokens.c.revoked_at.is_(None), worker_tokens.c.last_seen_at > since
                    )
                ).scalar_one()
            )

    def all(self) -> list[WorkerInfo]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(worker_tokens).order_by(worker_tokens.c.id)).all()
        return [WorkerInfo.from_row(r) for r in rows]

    def revoke(self, name: str) -> WorkerInfo:
        """Revoke worker ``name``'s token and hand its leases back to the queue at once.

        One transaction.  It locks the token's row first (the UPDATE), which a claim holds
        ``FOR SHARE`` while it takes a task, then requeues every task the token holds,
        untried (no attempt used; the next claim moves the epoch on).  A claim that
        committed first is therefore requeued here, and one that comes after finds the
        token revoked.  No transaction locks a task row and then a token row.
        """
        with self.db.write() as conn:
            row = conn.execute(
                self.db.for_update(
                    sa.select(worker_tokens).where(
                        worker_tokens.c.name == name, worker_tokens.c.revoked_at.is_(None)
                    )
                )
            ).one_or_none()
            if row is None:
                raise NotFound(f"no active worker named {name!r}")
            # The name is freed for a new token: the revoked row keeps a tombstone name.
            conn.execute(
                worker_tokens.update()
                .where(worker_tokens.c.id == row.id)
                .values(revoked_at=time.time(), name=f"{name}#revoked-{row.id}")
            )
            handed = conn.execute(
                tasks.update()
                .where(tasks.c.status == "processing", tasks.c.lease_worker == row.id)
                .values(
                    status="pending",
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=tasks.c.attempts - 1,
                )
                .returning(tasks.c.id, tasks.c.key_id, tasks.c.progress)
            ).all()
            for task_id, key_id, progress in handed:
                data = {"status": "pending", "progress": int(progress)}
                record(conn, task_id=task_id, key_id=key_id, kind="status", data=data)
            handed_back = len(handed)
            if handed_back and not self.db.is_sqlite:
                # Wake the workers of every replica (sent at commit).
                conn.execute(NOTIFY, {"channel": NOTIFY_CHANNEL})
            return WorkerInfo.from_row(
                conn.execute(sa.select(worker_tokens).where(worker_tokens.c.id == row.id)).one()
            )
