"""An in-test HTTP server that speaks the events contract, for the SDK's shells.

It is a stand-in, not omniflash: it serves ``GET /v1/tasks/{id}/events`` as the contract
writes it (``id:``/``event:``/``data:`` blocks, a current ``status`` event on connect, a
replay after ``Last-Event-ID``, ``: keep-alive`` comments, the stream closed after
``end``) and ``GET /v1/tasks/{id}``, from events a test appends.  What a real server
cannot do on demand, it can: drop a connection in the middle of an event.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.client.stubs import _Background

__all__ = ["EventServer", "event_server"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the stream ends when the connection closes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner: EventServer = self.server.owner  # type: ignore[attr-defined]
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts[:2] != ["v1", "tasks"] or len(parts) not in (3, 4) or parts[2] != owner.task_id:
            return self._json(404, {"error": {"code": 404, "message": "Not found"}})
        if len(parts) == 3:
            return self._json(200, {"code": 200, "data": owner.task()})
        if parts[3] != "events":
            return self._json(404, {"error": {"code": 404, "message": "Not found"}})
        owner.record(self.headers.get("Last-Event-ID"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            owner.serve(self.wfile, self.headers.get("Last-Event-ID"))
        except (BrokenPipeError, ConnectionResetError):
            owner.disconnected.set()

    def _json(self, status: int, body: Any) -> None:
        content = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class EventServer(_Background):
    """One task's events: ``add(kind, **data)`` appends one; ``drop_next(n)`` makes the next
    connection write ``n`` whole events, then half of the next one, then close."""

    def __init__(self, task_id: str = "task_E") -> None:
        super().__init__(_Handler)
        self.task_id = task_id
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.last_event_ids: list[str | None] = []
        self.disconnected = threading.Event()
        self.listening = threading.Event()
        """Set once a first connection has its opening event: what a test adds after
        this happens while a client listens (before it, the opening could already be the
        end)."""
        self._state: dict[str, Any] = {"id": task_id, "status": "pending", "progress": 0}
        self._cond = threading.Condition()
        self._drops: list[int] = []

    def __enter__(self) -> EventServer:
        super().__enter__()
        return self

    def task(self) -> dict[str, Any]:
        with self._cond:
            return dict(self._state)

    def add(self, kind: str, **data: Any) -> None:
        with self._cond:
            if kind == "end":
                self._state = dict(data["task"])
            else:
                self._state.update({k: v for k, v in data.items() if k in ("status", "progress")})
            self.events.append((len(self.events) + 1, kind, {"task_id": self.task_id, **data}))
            self._cond.notify_all()

    def drop_next(self, whole_events: int) -> None:
        with self._cond:
            self._drops.append(whole_events)

    def record(self, last_event_id: str | None) -> None:
        with self._cond:
            self.last_event_ids.append(last_event_id)

    def serve(self, out: Any, last_event_id: str | None) -> None:
        with self._cond:
            drop = self._drops.pop(0) if self._drops else None
            if last_event_id is not None and last_event_id.isdigit():
                sent = int(last_event_id)
            else:
                state = self._state
                latest = self.events[-1][0] if self.events else 0
                first = {"task_id": self.task_id, "status": state["status"]}
                first["progress"] = state.get("progress", 0)
                kind = (
                    "end" if state["status"] in ("completed", "failed", "cancelled") else "status"
                )
                if kind == "end":
                    first = {"task_id": self.task_id, "task": state}
                out.write(_block(latest, kind, first))
                out.flush()
                self.listening.set()
                if kind == "end":
                    return
                sent = latest
        written = 0
        while True:
            with self._cond:
                pending = [e for e in self.events if e[0] > sent]
                if not pending and not self._cond.wait(timeout=0.2):
                    out.write(b": keep-alive\n\n")
                    out.flush()
                    continue
            for event_id, kind, data in pending:
                block = _block(event_id, kind, data)
                if drop is not None and written == drop:
                    out.write(block[: len(block) // 2])
                    out.flush()
                    return
                out.write(block)
                out.flush()
                written += 1
                sent = event_id
                if kind == "end":
                    return


def _block(event_id: int, kind: str, data: dict[str, Any]) -> bytes:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


@contextmanager
def event_server() -> Iterator[EventServer]:
    with EventServer() as server:
        yield server
