"""Tables and versioned migrations.

Every schema change is a new entry in ``MIGRATIONS``; ``Database.migrate()`` applies
the ones a database has not seen, in order, all in one transaction that holds the
migration lock (an advisory lock on PostgreSQL, the write lock on SQLite), so that
processes starting together on an empty database migrate it once, and a failed
migration leaves the schema as it was.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

__all__ = [
    "MIGRATIONS",
    "api_keys",
    "idempotency",
    "ledger",
    "meta",
    "metadata",
    "task_events",
    "tasks",
    "video_deletions",
    "webhook_outbox",
    "webhook_secrets",
    "worker_tokens",
]

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("rpm", sa.Integer, nullable=False),
    sa.Column("max_concurrent", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    # The submit rate: requests counted in the minute ``rate_window`` (Unix minutes).  On
    # the key's row, so that a submit counts itself in the statement that locks the key.
    sa.Column("rate_window", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rate_hits", sa.Integer, nullable=False, server_default="0"),
    # The key's pending and processing tasks: one more in the submit's transaction, one
    # less in the transaction that ends a task (``TaskEnds._ended``).
    sa.Column("in_flight", sa.Integer, nullable=False, server_default="0"),
)
V4_COLUMNS = ("rate_window", "rate_hits", "in_flight")
"""The key columns migration 4 added."""
V5_COLUMNS = ("lease_worker", "claimed_at")
"""The task columns migration 5 added."""

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("task_id", sa.String(40), nullable=True, index=True),
    sa.Column("delta", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.String(20), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.Integer, nullable=False, default=0),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("credits", sa.BigInteger, nullable=False),
    sa.Column("estimated_time", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("completed_at", sa.Float, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("result_key", sa.String(200), nullable=True),
    sa.Column("result_expires_at", sa.Float, nullable=True),
    sa.Column("result_deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("info", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(100), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    sa.Column("lease_epoch", sa.Integer, nullable=False, default=0),
    # The worker token whose lease this is (the last one to claim it); NULL for the
    # in-process workers.  Every ``/worker/v1/`` call on the task must come from it.
    sa.Column("lease_worker", sa.Integer, nullable=True),
    # When the current lease was claimed (the database's clock): a remote worker's lease
    # is not renewed past the task's time limit from here.
    sa.Column("claimed_at", sa.Float, nullable=True),
    sa.Index("ix_tasks_key_created", "key_id", "created_at"),
    sa.Index("ix_tasks_status", "status", "created_at"),
)

idempotency = sa.Table(
    "idempotency",
    metadata,
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), primary_key=True),
    sa.Column("idem_key", sa.String(255), primary_key=True),
    sa.Column("body_hash", sa.String(64), nullable=False),
    sa.Column("task_id", sa.String(40), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

_rate_windows_v1 = sa.Table(
    "rate_windows",
    sa.MetaData(),
    sa.Column("key_id", sa.Integer, primary_key=True),
    sa.Column("window", sa.BigInteger, primary_key=True),
    sa.Column("hits", sa.Integer, nullable=False),
)
"""Version 1's submit-rate counters; migration 4 moved them onto ``api_keys``."""


worker_tokens = sa.Table(
    "worker_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("last_seen_at", sa.Float, nullable=True),
)

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
"""Values every process of a deployment shares, such as the URL-signing secret."""

webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    # The ``webhook-id`` header: the same on every attempt of one event.
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("task_id", sa.String(40), sa.ForeignKey("tasks.id"), nullable=False, index=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("event", sa.String(40), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(100), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.Index("ix_webhook_outbox_due", "state", "next_attempt_at"),
)
"""Webhooks to send: written in the transaction that ends a task, claimed under a lease."""

webhook_secrets = sa.Table(
    "webhook_secrets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("secret", sa.String(100), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
)
"""Each key's webhook signing secrets: the current one (no expiry) and rotated-out ones."""

video_deletions = sa.Table(
    "video_deletions",
    metadata,
    sa.Column("task_id", sa.String(40), sa.ForeignKey("tasks.id"), primary_key=True),
    sa.Column("deleted_at", sa.Float, nullable=False),
)
"""Tasks whose video the owner deleted (OpenAI ``DELETE /v1/videos/{id}``)."""

task_events = sa.Table(
    "task_events",
    metadata,
    # The stream's event id: increasing in commit order closely enough for a resume, as
    # each row is written under its task's lock (one task's events never interleave).
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        sa.Identity(),
        primary_key=True,
    ),
    sa.Column("task_id", sa.String(40), sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("key_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_task_events_task", "task_id", "id"),
    sa.Index("ix_task_events_key", "key_id", "id"),
    # SQLite: never hand out an id again after the newest row is deleted.
    sqlite_autoincrement=True,
)
"""What happened to a task, in order (status, progress, preview, end): the event streams
replay it from an id, and read what a notification announced."""


def _v1(conn: sa.Connection) -> None:
    # api_keys and tasks as version 1 had them: migrations 4 and 5 add columns.
    v1 = sa.MetaData()
    keys_v1 = sa.Table(
        "api_keys", v1, *(c._copy() for c in api_keys.columns if c.name not in V4_COLUMNS)
    )
    tasks_v1 = sa.Table(
        "tasks",
        v1,
        *(c._copy() for c in tasks.columns if c.name not in V5_COLUMNS),
        sa.Index("ix_tasks_key_created", "key_id", "created_at"),
        sa.Index("ix_tasks_status", "status", "created_at"),
    )
    for table in (keys_v1, ledger, tasks_v1, idempotency, _rate_windows_v1):
        table.create(conn)


ACTIVE_PREDICATE = "status IN ('pending', 'processing')"
"""A task in flight: it holds a place in its key's ``max_concurrent``."""


def _v2(conn: sa.Connection) -> None:
    for table in (worker_tokens, meta):
        table.create(conn)
    # Reaps look for expired leases.
    conn.exec_driver_sql("CREATE INDEX ix_tasks_lease ON tasks (status, lease_expires_at)")
    # Submits counted the key's tasks in flight through this index until migration 4.
    conn.exec_driver_sql(f"CREATE INDEX ix_tasks_active ON tasks (key_id) WHERE {ACTIVE_PREDICATE}")


def _v3(conn: sa.Connection) -> None:
    for table in (webhook_outbox, webhook_secrets, video_deletions):
        table.create(conn)


def _v4(conn: sa.Connection) -> None:
    # Counters on the key's row, which a submit locks anyway: its rate this minute (the
    # table that held it goes) and its tasks in flight (the partial index that counted
    # them goes), so a submit costs the same however many tasks the key has.
    for column in V4_COLUMNS:
        kind = "BIGINT" if column == "rate_window" else "INTEGER"
        conn.exec_driver_sql(f"ALTER TABLE api_keys ADD COLUMN {column} {kind} NOT NULL DEFAULT 0")
    conn.exec_driver_sql(
        "UPDATE api_keys SET in_flight = (SELECT count(*) FROM tasks "
        f"WHERE tasks.key_id = api_keys.id AND {ACTIVE_PREDICATE})"
    )
    conn.exec_driver_sql("DROP TABLE rate_windows")
    conn.exec_driver_sql("DROP INDEX ix_tasks_active")
    # A key's page of tasks, newest first (ids sort by creation time), without a sort.
    conn.exec_driver_sql("CREATE INDEX ix_tasks_key_id ON tasks (key_id, id)")


def _v5(conn: sa.Connection) -> None:
    # A lease is bound to the worker token that claimed it, and timed from its claim;
    # leases taken before the upgrade belong to no token and end by the reaper.
    conn.exec_driver_sql("ALTER TABLE tasks ADD COLUMN lease_worker INTEGER")
    conn.exec_driver_sql("ALTER TABLE tasks ADD COLUMN claimed_at FLOAT")


def _v6(conn: sa.Connection) -> None:
    task_events.create(conn)


MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (1, "keys, ledger, tasks, idempotency, rate windows", _v1),
    (2, "worker tokens, shared meta values, lease and in-flight indexes", _v2),
    (3, "webhook outbox and secrets, deleted videos", _v3),
    (4, "submit rate and tasks in flight counted on the key row, key-and-id index", _v4),
    (5, "a task's lease names the worker token that holds it and when it was claimed", _v5),
    (6, "task events: what the event streams send and replay", _v6),
]
