"""uvicorn's HTTP protocol with a deadline on each request head.

uvicorn closes an idle keep-alive connection, but a client that opens a connection
and sends its request line and headers a byte at a time is held open for ever (a
"slowloris"): each holds a file descriptor.  ``protocol_class(timeout_s)`` returns
uvicorn's own protocol (httptools when installed, else h11) with a deadline per
connection, set when the connection opens and again after each answer, and cleared
when a whole request head has arrived (the app is called).  One timer per event loop
(``_Sweep``) closes the connections past their deadline, a tenth of ``timeout_s`` (at
most a second) after it at the latest: a timer per request would cost each poll more
than the deadline is worth.  Slow bodies are ``omniflash.api.bodies``' business::

    uvicorn.Config(app, http=protocol_class(10.0))
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["protocol_class"]


class _Sweep:
    """The connections of one event loop that wait for a request head, looked at every
    ``period_s`` while there are any."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period_s: float) -> None:
        self.loop = loop
        self.period_s = period_s
        self.connections: set[_HeadTimeout] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: _HeadTimeout) -> None:
        self.connections.add(connection)
        if self._timer is None:
            self._timer = self.loop.call_later(self.period_s, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in [c for c in self.connections if c.head_deadline <= now]:
            connection.head_timed_out()
        self._timer = self.loop.call_later(self.period_s, self._sweep) if self.connections else None


_sweeps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Sweep]] = (
    weakref.WeakKeyDictionary()
)


def _sweep_for(loop: asyncio.AbstractEventLoop, timeout_s: float) -> _Sweep:
    by_period = _sweeps.setdefault(loop, {})
    period_s = min(1.0, timeout_s / 10)
    sweep = by_period.get(period_s)
    if sweep is None:
        sweep = by_period[period_s] = _Sweep(loop, period_s)
    return sweep


class _HeadTimeout(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    head_timeout_s: float = 10.0
    head_deadline: float = float("inf")
    """When the request head being awaited is late (the loop's clock); ``inf``: none is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner: Any = vars(self)["app"]  # set by uvicorn's __init__ (h11 or httptools)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            self.head_deadline = float("inf")
            await inner(scope, receive, send)

        self.app = app

    def head_timed_out(self) -> None:
        self._sweep.connections.discard(self)
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._sweep = _sweep_for(self.loop, self.head_timeout_s)
        self.head_deadline = self.loop.time() + self.head_timeout_s
        self._sweep.add(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's head gets the same deadline; a pipelined one that is
        # already parsed clears it as soon as its app call starts.
        self.head_deadline = self.loop.time() + self.head_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self._sweep.connections.discard(self)
        super().connection_lost(exc)


def protocol_class(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol closing connections whose request head takes over ``timeout_s``."""
    return type("HeadTimeoutProtocol", (_HeadTimeout,), {"head_timeout_s": timeout_s})
