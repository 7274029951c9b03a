"""Persistent state: keys and the ledger, idempotency, and tasks (which are the queue)."""

from __future__ import annotations

from omniflash.store.db import Database, StoreUnavailable
from omniflash.store.files import FileStore
from omniflash.store.keys import KeyInfo, KeyStore
from omniflash.store.meta import MetaStore
from omniflash.store.task_rows import (
    NOTIFY_CHANNEL,
    Claim,
    IdempotencyRequest,
    Submission,
    TaskRow,
    TaskStatus,
)
from omniflash.store.tasks import TaskStore
from omniflash.store.workers import WorkerInfo, WorkerStore

__all__ = [
    "NOTIFY_CHANNEL",
    "Claim",
    "Database",
    "FileStore",
    "IdempotencyRequest",
    "KeyInfo",
    "KeyStore",
    "MetaStore",
    "Store",
    "StoreUnavailable",
    "Submission",
    "TaskRow",
    "TaskStatus",
    "TaskStore",
    "WorkerInfo",
    "WorkerStore",
]


class Store:
    """One database, its migrations applied, and the stores over it."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.db = Database(url)
        if migrate:
            self.db.migrate()
        self.keys = KeyStore(self.db)
        self.tasks = TaskStore(self.db)
        self.meta = MetaStore(self.db)
        self.workers = WorkerStore(self.db)
        self.files = FileStore(self.db)

    def close(self) -> None:
        self.db.dispose()
