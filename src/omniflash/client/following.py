"""Following a task's events (``GET /v1/tasks/{id}/events``) as flows of the client core.

``EventStreams.follow`` reads the server-sent events of one task through ``Open`` and
``Read`` effects, hands each ``TaskEvent`` to a callback that may ask for one more effect
(``Emit`` it to an iterating caller, ``Report`` it to ``on_progress``), and returns at the
``end`` event.  A dropped or silent connection is opened again with ``Last-Event-ID``, so
no event is missed or repeated; the server's ``retry:`` sets the pause before it.

Whether a server has events at all is remembered per client: ``unsupported`` becomes
true after a 405 on the route, or a 404 for a task that ``GET /v1/tasks/{id}`` finds
(an older server; the core's ``wait`` asks), and ``wait()`` then polls without asking
again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote

import httpx

from omniflash.client.effects import Close, Effect, Flow, Open, Opened, Read, Sleep
from omniflash.client.errors import (
    APIConnectionError,
    APIStatusError,
    OmniflashClientError,
)
from omniflash.client.policies import RetryPolicy
from omniflash.client.protocol import absolute, check, default_headers, transport_error
from omniflash.client.sse import SSEParser
from omniflash.client.task_events import END, TaskEvent

__all__ = ["SILENCE_S", "EventStreams", "EventsUnavailable", "Seen"]

SILENCE_S = 45.0
"""How long a stream may say nothing before it counts as dropped: the server sends a
comment every 15 s (``OMNIFLASH_EVENTS_KEEPALIVE_S``), so three are missing by then."""

Seen = Callable[[TaskEvent], Effect | None]


class EventsUnavailable(OmniflashClientError):
    """The server answered the events route with 405, or with something not a stream."""

    def __init__(self, message: str, *, status_code: int | None) -> None:
        super().__init__(message)
        self.status_code = status_code


class EventStreams:
    """The event streams of one client: its server, key, retry policy and what it learnt."""

    def __init__(self, base_url: str, api_key: str, retry: RetryPolicy) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.retry = retry
        self.unsupported = False
        """True once this server is known to have no events: ``wait()`` polls."""

    def follow(
        self,
        task_id: str,
        seen: Seen,
        *,
        last_event_id: str | None = None,
        deadline: float | None = None,
    ) -> Flow[TaskEvent | None]:
        """Follow ``task_id``'s events until its ``end`` (returned) or ``deadline`` (``None``,
        a ``time.monotonic()`` value).

        Raises ``EventsUnavailable`` on a 405 or an answer that is not an event stream,
        ``NotFoundError`` on a 404 (no such task of this key, or a server without events),
        the SDK's error for any other refusal, and the last connection error once
        the retry policy's reconnections in a row found no event.
        """
        url = absolute(f"/v1/tasks/{quote(task_id, safe='')}/events", self.base_url)
        last_id = last_event_id
        failures = 0
        retry_ms: int | None = None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            headers = default_headers(self.api_key) | {
                "Accept": "text/event-stream",
                "Cache-Control": "no-cache",
            }
            if last_id:
                headers["Last-Event-ID"] = last_id
            silence = SILENCE_S if remaining is None else min(SILENCE_S, remaining)
            opened: Opened | None = None
            try:
                opened = yield Open(url, headers, silence)
                _check_stream(opened.response)
                parser = SSEParser(last_id or "")
                while chunk := (yield Read(opened)):
                    for message in parser.feed(chunk):
                        last_id = parser.last_event_id or last_id
                        event = TaskEvent.from_message(message)
                        if event is None:
                            continue
                        failures = 0
                        effect = seen(event)
                        if effect is not None:
                            yield effect
                        if event.kind == END:
                            yield Close(opened)
                            return event
                    last_id = parser.last_event_id or last_id
                    retry_ms = parser.retry_ms if parser.retry_ms is not None else retry_ms
                    if deadline is not None and time.monotonic() >= deadline:
                        yield Close(opened)
                        return None
                error: OmniflashClientError = APIConnectionError(
                    f"the events of {task_id} stopped before the task's end"
                )
            except httpx.TransportError as exc:
                error = transport_error(exc, f"GET {url}")
            except APIStatusError as exc:
                if exc.status_code == 405:
                    raise EventsUnavailable(str(exc), status_code=exc.status_code) from exc
                if not self.retry.retryable(exc, submit=False):
                    raise
                error = exc
            if opened is not None:
                yield Close(opened)
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if failures >= self.retry.max_retries:
                raise error
            pause = self.retry.pause(error, failures) if retry_ms is None else retry_ms / 1000
            failures += 1
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            yield Sleep(pause)


def _check_stream(response: httpx.Response) -> None:
    check(response)
    kind = response.headers.get("content-type", "")
    if not kind.startswith("text/event-stream"):
        raise EventsUnavailable(
            f"the events route answered {kind or 'no content type'}, not an event stream",
            status_code=response.status_code,
        )
