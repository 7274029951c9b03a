"""Remote workers' tokens: created by an operator, stored hashed, revocable by name.

A worker token only opens the API's ``/worker/v1/`` endpoints, and an API key only the
public API: the two live in different tables, so neither can stand in for the other.
"""

from __future__ import annotations

import dataclasses
import time

import sqlalchemy as sa

from omniflash.errors import Conflict, NotFound
from omniflash.ids import hash_key, new_worker_token
from omniflash.store.db import Database, retry_repeatable
from omniflash.store.schema import worker_tokens

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

    @retry_repeatable
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

    def all(self) -> list[WorkerInfo]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(worker_tokens).order_by(worker_tokens.c.id)).all()
        return [WorkerInfo.from_row(r) for r in rows]

    def revoke(self, name: str) -> WorkerInfo:
        """Revoke worker ``name``'s token; its leases run out and the reaper requeues them."""
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(worker_tokens).where(
                    worker_tokens.c.name == name, worker_tokens.c.revoked_at.is_(None)
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
            return WorkerInfo.from_row(
                conn.execute(sa.select(worker_tokens).where(worker_tokens.c.id == row.id)).one()
            )
