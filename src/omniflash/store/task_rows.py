"""A task as the store hands it out: its status, its row, a claim, a submit's outcome.

Shared by the submit side (``store.submit``), the lease queue (``store.queue``), the hot
reads (``store.reads``) and everything above the store that reads a task.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from omniflash.contract import GenerationSpec

__all__ = [
    "ACTIVE",
    "NOTIFY_CHANNEL",
    "TERMINAL",
    "Claim",
    "EndHook",
    "ErrorHook",
    "IdempotencyRequest",
    "Submission",
    "TaskRow",
    "TaskStatus",
]


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    """Queued, waiting for a worker."""
    PROCESSING = "processing"
    """A worker holds the lease and is generating."""
    COMPLETED = "completed"
    """The result file is stored; ``result_key`` names it."""
    FAILED = "failed"
    """Ended with an error; refunded."""
    CANCELLED = "cancelled"
    """Cancelled by its owner; refunded."""

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


NOTIFY_CHANNEL = "omniflash_tasks"
ACTIVE = (TaskStatus.PENDING.value, TaskStatus.PROCESSING.value)
TERMINAL = tuple(s.value for s in TaskStatus if s.terminal)


@functools.lru_cache(maxsize=4096)
def _spec(text: str) -> GenerationSpec:
    """A task's spec, parsed once per process: it never changes after the submit, and
    a poll or a page of tasks would otherwise parse the same JSON again each time."""
    return GenerationSpec.from_json(text)


@dataclasses.dataclass(frozen=True)
class TaskRow:
    id: str
    key_id: int
    status: TaskStatus
    progress: int
    spec: GenerationSpec
    seed: int
    credits: int
    estimated_time: int
    created_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None
    result_key: str | None
    result_expires_at: float | None
    result_deleted: bool
    attempts: int
    lease_epoch: int
    info: dict[str, Any]
    lease_worker: int | None = None
    """The worker token that holds (or last held) the lease; ``None`` for in-process workers."""

    @classmethod
    def from_row(cls, row: sa.Row[tuple[object, ...]]) -> TaskRow:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_mapping(cls, m: Mapping[Any, Any]) -> TaskRow:
        """From a row's columns by name (a SQLAlchemy row's mapping, or a plain dict)."""
        return cls(
            id=m["id"],
            key_id=m["key_id"],
            status=TaskStatus(m["status"]),
            progress=m["progress"],
            spec=_spec(m["spec"]),
            seed=m["seed"],
            credits=m["credits"],
            estimated_time=m["estimated_time"],
            created_at=m["created_at"],
            started_at=m["started_at"],
            completed_at=m["completed_at"],
            error=m["error"],
            result_key=m["result_key"],
            result_expires_at=m["result_expires_at"],
            result_deleted=bool(m["result_deleted"]),
            attempts=m["attempts"],
            lease_epoch=m["lease_epoch"],
            info=json.loads(m["info"]) if m["info"] else {},
            lease_worker=m.get("lease_worker"),
        )


@dataclasses.dataclass(frozen=True)
class Claim:
    task: TaskRow
    owner: str
    epoch: int


@dataclasses.dataclass(frozen=True)
class IdempotencyRequest:
    """A submit's ``Idempotency-Key`` and the hash of its body."""

    key: str
    body_hash: str


@dataclasses.dataclass(frozen=True)
class Submission:
    task: TaskRow
    replayed: bool
    """True when an earlier submit with the same ``Idempotency-Key`` made ``task``."""


EndHook = Callable[[sa.Connection, TaskRow, TaskStatus], None]
"""Called inside the transaction that ends a task, with the task as it ended."""
ErrorHook = Callable[[str, str], None]
"""Called with ``(job, id)`` when one task's (or delivery's) step failed and was skipped."""
