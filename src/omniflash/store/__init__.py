"""Persistent state: keys and the ledger, idempotency, and tasks (which are the queue)."""

from __future__ import annotations

from omniflash.store.db import Database
from omniflash.store.idempotency import IdempotencyStore
from omniflash.store.keys import KeyInfo, KeyStore
from omniflash.store.tasks import Claim, TaskRow, TaskStatus, TaskStore

__all__ = [
    "Claim",
    "Database",
    "IdempotencyStore",
    "KeyInfo",
    "KeyStore",
    "Store",
    "TaskRow",
    "TaskStatus",
    "TaskStore",
]


class Store:
    """One database, its migrations applied, and the stores over it."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.db = Database(url)
        if migrate:
            self.db.migrate()
        self.keys = KeyStore(self.db)
        self.tasks = TaskStore(self.db)
        self.idempotency = IdempotencyStore(self.db)

    def close(self) -> None:
        self.db.dispose()
