"""Persistent state: keys and the ledger, idempotency, tasks (which are the queue), remote
workers' tokens, deleted videos, and the webhooks' outbox and secrets.

Every query of omniflash lives in this package, and every one is written in one style:
SQLAlchemy Core statements over the tables of ``store.schema``.  Core, because one
statement then runs on SQLite and PostgreSQL alike (the dialect writes ``?`` or
``%(name)s``, ``FOR UPDATE`` or nothing, ``ON CONFLICT`` and ``RETURNING``), the tables'
columns are named once, and a typo is an ``AttributeError`` at import rather than an
SQL error in production.  Statements on hot paths are built once, at import, since
building a statement costs more than running it; the API's hot reads
(``store.reads``) go one step further and compile theirs once per dialect to the
driver's SQL text, which the driver runs without SQLAlchemy's per-call machinery.  The
one submit that must be a single statement on PostgreSQL (``store.submit_statements``)
is Core too: a chain of data-modifying CTEs, from the same parameters and row values as
SQLite's statement-at-a-time submit.  Left as text are only what Core has no statement
for: DDL in the migrations, SQLite's ``PRAGMA`` and ``BEGIN IMMEDIATE``, PostgreSQL's
``LOCK TABLE`` and ``LISTEN``.

The modules, by what they own:

- ``db``: the engine, transactions, retries on a dropped connection, migrations,
  ``StoreUnavailable`` and ``OUTAGES`` (the database cannot be reached: what callers
  catch, by the store's names, without knowing the driver's; the API answers 503 to them:
  the store knows nothing of HTTP).
- ``schema``: the tables and their migrations.
- ``keys``: API keys, balances, the ledger's grants and top-ups, request rates.
- ``tasks``: ``TaskStore``, the one object the rest asks about tasks, composed of
  ``submit`` (the API side: count, charge, idempotency, queue, cancel; statements in
  ``submit_statements``) and ``queue`` (claim, heartbeat, complete, fail, release, reap),
  over ``task_rows`` (the rows) and ``task_ends`` (requeue, end and refund, end hooks).
  A result's price is decided in ``queue``'s ``complete``, from the task's row and
  ``omniflash.pricing``.
- ``reads``: the API's hot reads, awaited on the event loop.
- ``workers``, ``files``, ``videos``, ``meta``: worker tokens, what the orphan sweep
  asks before it deletes a file, deleted videos, values a deployment shares.
- ``events``: task events (status, progress, preview, end), written with the change they
  report, for the event streams; ``previews``: the preview frames a lease holder adds.
- ``outbox``, ``webhook_secrets``: the webhooks' rows (``omniflash.webhooks`` holds the
  policy and the sending).
"""

from __future__ import annotations

from omniflash.store.db import OUTAGES, Database, StoreUnavailable
from omniflash.store.events import EVENTS_CHANNEL, EventStore, TaskEvent
from omniflash.store.files import FileStore
from omniflash.store.keys import KeyInfo, KeyStore
from omniflash.store.meta import MetaStore
from omniflash.store.previews import PREVIEWS_PREFIX, preview_key
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
    "EVENTS_CHANNEL",
    "NOTIFY_CHANNEL",
    "OUTAGES",
    "PREVIEWS_PREFIX",
    "Claim",
    "Database",
    "EventStore",
    "FileStore",
    "IdempotencyRequest",
    "KeyInfo",
    "KeyStore",
    "MetaStore",
    "Store",
    "StoreUnavailable",
    "Submission",
    "TaskEvent",
    "TaskRow",
    "TaskStatus",
    "TaskStore",
    "WorkerInfo",
    "WorkerStore",
    "preview_key",
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
        self.events = EventStore(self.db)

    def close(self) -> None:
        self.db.dispose()
