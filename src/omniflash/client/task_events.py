"""A task's events as the SDK hands them out: ``TaskEvent``, read from an SSE message.

The server sends four kinds (``GET /v1/tasks/{id}/events``): ``status``, ``progress``,
``preview`` and ``end``; each ``data`` is a JSON object with the ``task_id``.  A kind this
SDK does not know is handed out as it came, so a newer server's events survive.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from omniflash.client.models import Task
from omniflash.client.sse import SSEMessage

__all__ = ["END", "TaskEvent"]

END = "end"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclasses.dataclass(frozen=True)
class TaskEvent:
    """One event of a task: ``kind`` is ``status``, ``progress``, ``preview`` or ``end``.

    ``id`` is the server's event id (what ``Last-Event-ID`` resumes after); ``data`` is the
    event's JSON object as received.
    """

    id: str
    kind: str
    task_id: str
    data: Mapping[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_message(cls, message: SSEMessage) -> TaskEvent | None:
        """The event of an SSE message, or ``None`` when its data is not a JSON object."""
        try:
            data = json.loads(message.data)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        task_id = data.get("task_id")
        return cls(message.id, message.event, task_id if isinstance(task_id, str) else "", data)

    @property
    def status(self) -> str | None:
        """The task's status this event reports (an ``end`` event's from its task)."""
        if self.kind == END:
            task = self.data.get("task")
            value = task.get("status") if isinstance(task, Mapping) else self.data.get("status")
        else:
            value = self.data.get("status")
        return value if isinstance(value, str) else None

    @property
    def progress(self) -> int | None:
        """The progress (0-100) this event reports, if it reports one."""
        value = _number(self.data.get("progress"))
        if value is None and self.kind == END:
            task = self.data.get("task")
            value = _number(task.get("progress")) if isinstance(task, Mapping) else None
        return None if value is None else int(value)

    @property
    def eta_s(self) -> float | None:
        """A ``progress`` event's estimate of the seconds left."""
        return _number(self.data.get("eta_s"))

    @property
    def preview_url(self) -> str | None:
        """A ``preview`` event's signed URL of the preview image."""
        url = self.data.get("url")
        return url if self.kind == "preview" and isinstance(url, str) else None

    @property
    def task(self) -> Task | None:
        """An ``end`` event's task, as ``GET /v1/tasks/{id}`` shows it."""
        task = self.data.get("task")
        return Task.from_data(task) if self.kind == END and isinstance(task, Mapping) else None
