"""One event stream: the rows of ``task_events`` as server-sent events.

A stream is an async generator on the event loop.  It subscribes to the hub first, then
reads the key's events after its last id, sends them, and waits for news (or sends a
``: keep-alive`` comment when none comes in ``OMNIFLASH_EVENTS_KEEPALIVE_S``).  What it
sends comes from the rows, never from the news, so a late or doubled wake-up neither
loses nor repeats an event.

Event ids are ``task_events.id``.  One task's events are written under its row lock, so
their ids rise in commit order; the events of *several* tasks (``GET /v1/events``) may
commit out of id order on PostgreSQL (two transactions, the later id committing first).
The stream therefore reads again from a little behind what it sent (``REORDER_S``) and
skips ids it has sent: a row that commits that late is still delivered.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from omniflash.api.deps import Services
from omniflash.api.events.hub import EventHub
from omniflash.api.omni.apimart import task_data
from omniflash.store import TaskEvent, TaskRow

__all__ = ["KEEP_ALIVE", "PREVIEW_URL_S", "REORDER_S", "Stream", "sse"]

KEEP_ALIVE = b": keep-alive\n\n"
REORDER_S = 2.0
"""How long after sending an id the stream still looks below it for late commits."""
PREVIEW_URL_S = 3600
"""How long a preview's signed URL lasts."""
BATCH = 200


def sse(event_id: int, kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event: its id, its name and one line of JSON."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\nevent: {kind}\ndata: {body}\n\n".encode()


@dataclasses.dataclass
class Stream:
    """What one stream needs: the caller's key, how to render a task, and the hub."""

    services: Services
    hub: EventHub
    key_id: int
    base_url: str
    language: str | None
    task_id: str | None = None
    """One task's stream; ``None``: every task of the key (``GET /v1/events``)."""
    version: str | None = None
    """The ``X-APIMart-Response-Version`` the stream was opened with, as a poll's."""

    def task_body(self, task: TaskRow) -> dict[str, Any]:
        """The ``data`` of ``GET /v1/tasks/{id}`` as this stream's caller would poll it."""
        return task_data(self.services, task, self.base_url, self.language, self.version)

    async def render(self, event: TaskEvent) -> bytes | None:
        """``event`` as the wire has it; ``None`` for one that is no longer there to show
        (an end whose task's row is gone)."""
        data = event.data
        out: dict[str, Any] = {"task_id": event.task_id}
        if event.kind == "status":
            out["status"] = data.get("status")
            out["progress"] = int(data.get("progress", 0))
        elif event.kind == "progress":
            out["progress"] = data.get("progress")
            out["eta_s"] = data.get("eta_s")
        elif event.kind == "preview":
            expires_at = int(time.time()) + PREVIEW_URL_S
            blob = str(data.get("blob", ""))
            out.update(
                index=data.get("index"),
                url=self.base_url.rstrip("/") + self.services.signer.path(blob, expires_at),
                expires_at=expires_at,
                width=data.get("width"),
                height=data.get("height"),
                progress=data.get("progress"),
            )
        elif event.kind == "end":
            task = await self.services.reads.task(event.task_id, self.key_id)
            if task is None:
                return None
            out["task"] = self.task_body(task)
        else:
            return None
        return sse(event.id, event.kind, out)

    async def opening(self) -> tuple[int, list[bytes], bool]:
        """Without ``Last-Event-ID``: where to start, what to send first, and whether the
        stream is over at once.  A task's stream starts with its state as a ``status``
        event (an ended task's: its ``end``), under the id of its newest event; the key's
        stream starts after the key's newest event and sends nothing yet."""
        reads = self.services.reads
        if self.task_id is None:
            return await reads.last_key_event_id(self.key_id), [], False
        # The id first, then the row: the row is then at least as new as the id says, and
        # whatever comes after the id is sent next (at worst once more than needed).
        last = await reads.last_event_id(self.key_id, self.task_id)
        task = await reads.task(self.task_id, self.key_id)
        if task is None:
            return last, [], True
        if task.status.terminal:
            body = {"task_id": task.id, "task": self.task_body(task)}
            return last, [sse(last, "end", body)], True
        state = {"task_id": task.id, "status": task.status.value, "progress": task.progress}
        return last, [sse(last, "status", state)], False

    async def ended_meanwhile(self, last: int) -> bytes | None:
        """A resumed task stream with nothing left to replay: the task's ``end`` if it has
        ended (its events may have been deleted with its files), else ``None``."""
        assert self.task_id is not None
        task = await self.services.reads.task(self.task_id, self.key_id)
        if task is None or not task.status.terminal:
            return None
        return sse(last, "end", {"task_id": task.id, "task": self.task_body(task)})

    async def run(self, last_id: int | None, keepalive_s: float) -> AsyncIterator[bytes]:
        """The stream's bytes, from ``last_id`` (``Last-Event-ID``) or from now."""
        with self.hub.subscribe(self.key_id) as sub:
            if last_id is None:
                floor, first, over = await self.opening()
                for chunk in first:
                    yield chunk
                if over:
                    return
            else:
                floor = last_id
            sent: dict[int, float] = {}  # ids above ``floor``, and when they were sent
            resumed = last_id is not None
            while True:
                after, replayed = floor, 0
                while True:  # everything after the floor, a batch at a time
                    events = await self.services.reads.events(
                        self.key_id, after, self.task_id, limit=BATCH
                    )
                    replayed += len(events)
                    for event in events:
                        if event.id in sent:
                            continue
                        rendered = await self.render(event)
                        sent[event.id] = time.monotonic()
                        if rendered is not None:
                            yield rendered
                        if event.kind == "end" and self.task_id is not None:
                            return
                    if len(events) < BATCH:
                        break
                    after = events[-1].id
                if resumed and self.task_id is not None and not replayed:
                    end = await self.ended_meanwhile(floor)
                    if end is not None:
                        yield end
                        return
                resumed = False
                floor = _advance(floor, sent)
                # Only news makes a stream read again (a late commit sends its own): an idle
                # stream costs the database nothing, only a comment now and then.
                while not await sub.wait(keepalive_s):
                    yield KEEP_ALIVE


def _advance(floor: int, sent: dict[int, float]) -> int:
    """Move the floor up past the ids sent more than ``REORDER_S`` ago, and forget them:
    below the floor, nothing can commit any more (well, not within ``REORDER_S``)."""
    old = time.monotonic() - REORDER_S
    settled = [i for i, at in sent.items() if at < old]
    if not settled:
        return floor
    top = max(settled)
    for i in [i for i in sent if i <= top]:
        del sent[i]
    return max(floor, top)
