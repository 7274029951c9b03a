"""``GET /v1/tasks/{id}/events`` and ``GET /v1/events``: task events as server-sent events.

Each event is ``id:`` (the event's id), ``event:`` (``status``, ``progress``,
``preview`` or ``end``) and ``data:`` (one line of JSON, always with ``task_id``).  A
client that comes back with ``Last-Event-ID`` gets every event after that id, in order;
one without it gets the task's state first (``GET /v1/events``: the events from now
on).  A task's stream ends after its ``end``, whose ``task`` is the ``data`` of
``GET /v1/tasks/{id}`` for the same ``?language=``; the key's stream never ends.  An idle
stream sends a ``: keep-alive`` comment every ``OMNIFLASH_EVENTS_KEEPALIVE_S``.

A stream counts once against the key's read limit, when it connects.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from omniflash.api.deps import Reader, ServicesDep
from omniflash.api.events.hub import EventHub
from omniflash.api.events.streams import Stream
from omniflash.api.omni.apimart import RESPONSE_VERSION_HEADER, parse_language, response_version
from omniflash.errors import InvalidParam, NotFound
from omniflash.text import shown
from omniflash.text import task_id as checked_task_id

__all__ = ["HEADERS", "MAX_EVENT_ID", "last_event_id", "router"]

router = APIRouter()

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""No cache may keep the stream, and no proxy (nginx) may buffer it."""
MAX_EVENT_ID = 2**63 - 1
"""The largest id an event can have (a BIGINT)."""
LANGUAGE = Query(description="zh, en, ko or ja: the end's task as GET /v1/tasks/{id} gives it")


def last_event_id(header: str | None) -> int | None:
    """``Last-Event-ID``'s value: ``None`` when absent or empty; a decimal id from 0 to
    ``MAX_EVENT_ID`` otherwise, anything else is a 400 naming the header."""
    if header is None or header.strip() == "":
        return None
    value = header.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) > MAX_EVENT_ID:
        raise InvalidParam(
            f"Last-Event-ID must be an event id (a whole number from 0), not {shown(value)}",
            "Last-Event-ID",
        )
    return int(value)


def _stream(request: Request, stream: Stream) -> StreamingResponse:
    keepalive = stream.services.settings.events_keepalive_s
    start = last_event_id(request.headers.get("last-event-id"))
    return StreamingResponse(
        stream.run(start, keepalive), media_type="text/event-stream", headers=HEADERS
    )


def _hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.event_hub
    return hub


@router.get("/v1/tasks/{task_id}/events", summary="A task's events as they happen (SSE)")
async def task_events(
    task_id: str,
    request: Request,
    key: Reader,
    services: ServicesDep,
    language: Annotated[str | None, LANGUAGE] = None,
) -> StreamingResponse:
    """Server-sent events of one task: ``status``, ``progress``, ``preview``, then ``end``."""
    lang = parse_language(language)
    version = response_version(request.headers.get(RESPONSE_VERSION_HEADER))
    last_event_id(request.headers.get("last-event-id"))  # a bad one: 400 before anything
    task = await services.reads.task(checked_task_id(task_id), key.id)
    if task is None:
        raise NotFound(f"No task {shown(task_id)} for this API key")
    base = services.base_url(request)
    stream = Stream(services, _hub(request), key.id, base, lang, task_id=task.id, version=version)
    return _stream(request, stream)


@router.get("/v1/events", summary="Events of all the caller's tasks as they happen (SSE)")
async def key_events(
    request: Request,
    key: Reader,
    services: ServicesDep,
    language: Annotated[str | None, LANGUAGE] = None,
) -> StreamingResponse:
    """Server-sent events of every task of the key, from now on (or after ``Last-Event-ID``)."""
    lang = parse_language(language)
    version = response_version(request.headers.get(RESPONSE_VERSION_HEADER))
    last_event_id(request.headers.get("last-event-id"))
    base = services.base_url(request)
    stream = Stream(services, _hub(request), key.id, base, lang, version=version)
    return _stream(request, stream)
