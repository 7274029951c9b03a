"""Task events: what happened to a task, in order, for the event streams.

Each event is a row of ``task_events``, written in the same transaction as the change it
reports (``record``): a claim (``status``), a heartbeat whose progress rose
(``progress``), a preview frame (``preview``), a requeue (``status`` pending) and the end,
by whichever path (``end``).  A stream replays a key's rows after an id (``since``) and
is told when there are new ones:

- PostgreSQL: ``pg_notify('omniflash_events', '<key id>')`` in the writing transaction,
  which the server delivers at commit to every API process's one listening connection;
- SQLite (one process): the key ids are kept on the connection, and ``Database.write``
  hands them to ``Database.event_hooks`` once the transaction has committed.

Rows go with their task's files (``LeaseQueue.mark_result_deleted``), and any left are
deleted after ``EVENT_MAX_AGE_S`` (``EventStore.sweep``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import sqlalchemy as sa

from omniflash.store.db import EVENT_KEYS, Database, retry_disconnect
from omniflash.store.schema import task_events
from omniflash.text import is_task_id

__all__ = [
    "EVENTS_CHANNEL",
    "EVENT_KINDS",
    "EVENT_MAX_AGE_S",
    "EventStore",
    "TaskEvent",
    "event_statements",
    "record",
]

EVENTS_CHANNEL = "omniflash_events"
"""PostgreSQL's channel of task events; the payload is the key id whose task changed."""
EVENT_KINDS = ("status", "progress", "preview", "end")
EVENT_MAX_AGE_S = 7 * 24 * 3600.0
"""Events older than this are deleted even when their task's files are not yet due."""

_INSERT = task_events.insert()
_NOTIFY = sa.select(sa.func.pg_notify(sa.bindparam("channel"), sa.bindparam("payload")))


@dataclasses.dataclass(frozen=True)
class TaskEvent:
    """One row of ``task_events``: ``data`` is the JSON object its kind carries."""

    id: int
    task_id: str
    kind: str
    data: dict[str, Any]
    created_at: float

    @classmethod
    def from_row(cls, row: Any) -> TaskEvent:
        event_id, task_id, kind, data, created_at = row
        return cls(int(event_id), str(task_id), str(kind), json.loads(data), float(created_at))


def record(
    conn: sa.Connection,
    *,
    task_id: str,
    key_id: int,
    kind: str,
    data: dict[str, Any],
    now: float | None = None,
) -> None:
    """Write one event in the transaction of ``conn``, and announce it at commit."""
    conn.execute(
        _INSERT,
        {
            "task_id": task_id,
            "key_id": key_id,
            "kind": kind,
            "data": json.dumps(data, separators=(",", ":")),
            "created_at": time.time() if now is None else now,
        },
    )
    if conn.dialect.name == "sqlite":
        conn.info.setdefault(EVENT_KEYS, set()).add(key_id)
    else:
        conn.execute(_NOTIFY, {"channel": EVENTS_CHANNEL, "payload": str(key_id)})


def event_statements() -> dict[str, sa.Select[Any]]:
    """The streams' reads (for ``store.reads``): a key's events after an id, all of them
    or one task's, oldest first; and the newest event id of the key, or of one task."""
    columns = (
        task_events.c.id,
        task_events.c.task_id,
        task_events.c.kind,
        task_events.c.data,
        task_events.c.created_at,
    )
    mine = sa.and_(
        task_events.c.key_id == sa.bindparam("key_id", type_=sa.Integer),
        task_events.c.id > sa.bindparam("after", type_=sa.BigInteger),
    )
    limit = sa.bindparam("limit", type_=sa.Integer)
    one_task = task_events.c.task_id == sa.bindparam("task_id", type_=sa.String)
    return {
        "events": sa.select(*columns).where(mine).order_by(task_events.c.id).limit(limit),
        "task_events": sa.select(*columns)
        .where(mine, one_task)
        .order_by(task_events.c.id)
        .limit(limit),
        "last_key_event": sa.select(sa.func.coalesce(sa.func.max(task_events.c.id), 0)).where(
            task_events.c.key_id == sa.bindparam("key_id", type_=sa.Integer)
        ),
        "last_event": sa.select(sa.func.coalesce(sa.func.max(task_events.c.id), 0)).where(
            task_events.c.key_id == sa.bindparam("key_id", type_=sa.Integer), one_task
        ),
    }


class EventStore:
    """Task events through the store's engine (tests, the sweep, tools); the streams read
    through ``store.reads``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._sql = event_statements()

    @retry_disconnect
    def since(
        self, key_id: int, after_id: int, task_id: str | None = None, limit: int = 500
    ) -> list[TaskEvent]:
        """The key's events after ``after_id``, oldest first (one task's with ``task_id``;
        none for a ``task_id`` that cannot name a task, which is never sent to the database)."""
        if task_id is not None and not is_task_id(task_id):
            return []
        params: dict[str, Any] = {"key_id": key_id, "after": after_id, "limit": limit}
        name = "events"
        if task_id is not None:
            params["task_id"] = task_id
            name = "task_events"
        with self.db.read() as conn:
            rows = conn.execute(self._sql[name], params).all()
        return [TaskEvent.from_row(tuple(r)) for r in rows]

    @retry_disconnect
    def last_id(self, key_id: int, task_id: str) -> int:
        """The newest event id of the key's task ``task_id``; 0 when it has none."""
        if not is_task_id(task_id):
            return 0
        with self.db.read() as conn:
            found = conn.execute(
                self._sql["last_event"], {"key_id": key_id, "task_id": task_id}
            ).scalar_one()
        return int(found)

    @retry_disconnect
    def sweep(self, max_age_s: float = EVENT_MAX_AGE_S, now: float | None = None) -> int:
        """Delete events older than ``max_age_s``; returns how many."""
        before = (time.time() if now is None else now) - max_age_s
        with self.db.write() as conn:
            return int(
                conn.execute(task_events.delete().where(task_events.c.created_at < before)).rowcount
            )
