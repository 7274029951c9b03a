"""uvicorn's HTTP protocol with a deadline on each request head.

uvicorn closes an idle keep-alive connection, but a client that opens a connection
and sends its request line and headers a byte at a time is held open for ever (a
"slowloris"): each holds a file descriptor.  ``protocol_class(timeout_s)`` returns
uvicorn's own protocol (httptools when installed, else h11) with one timer per
connection, started when the connection opens and again after each answer, and
stopped when a whole request head has arrived (the app is called); when it fires the
connection is closed.  Slow bodies are ``omniflash.api.bodies``' business::

    uvicorn.Config(app, http=protocol_class(10.0))
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["protocol_class"]


class _HeadTimeout(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    head_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        inner: Any = vars(self)["app"]  # set by uvicorn's __init__ (h11 or httptools)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            self._stop_head_timer()
            await inner(scope, receive, send)

        self.app = app

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._start_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's head gets the same deadline; a pipelined one that is
        # already parsed stops this timer as soon as its app call starts.
        if not self.transport.is_closing():
            self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)


def protocol_class(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol closing connections whose request head takes over ``timeout_s``."""
    return type("HeadTimeoutProtocol", (_HeadTimeout,), {"head_timeout_s": timeout_s})
