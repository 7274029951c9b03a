"""Request bodies bounded while they stream, and timed out when they stall.

``BodyLimit`` sits in front of every route.  It picks the request's limit by the kind
of route (``body_limit``), refuses a declared ``Content-Length`` past it at once, and
counts the bytes of a body sent without one (chunked) as they arrive: the read that
passes the limit raises ``PayloadTooLarge`` (413), so no route, form parser or SDK
ever holds or spools more than the limit.  A body that sends nothing for
``Settings.body_timeout_s`` raises ``RequestTimeout`` (408).  Either way the answer
says ``Connection: close``, and the rest of the body is never read.

The route renders the error in its dialect's shape when the error passes through it;
when something else swallowed it (the MCP SDK answers its own errors), the middleware
answers in its place, with the renderer the app gives it (``Refusal``: the dialect's
shape by the request's path)::

    >>> body_limit(Settings(), "POST", "/v1/uploads/images", "multipart/form-data")
    Limit(size=21037056, message='The image is larger than 20 MB')

Large bodies are parsed off the event loop: ``off_loop`` runs a function in the
thread pool when the data is at least ``OFF_LOOP_BYTES`` long, and inline below that,
where the thread hop would cost more than the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omniflash.errors import OmniflashError, PayloadTooLarge, RequestTimeout
from omniflash.settings import Settings

__all__ = [
    "MCP_PATH",
    "MULTIPART_ENVELOPE",
    "OFF_LOOP_BYTES",
    "WORKER_JSON_BYTES",
    "BodyLimit",
    "Limit",
    "Refusal",
    "base64_length",
    "body_limit",
    "mb",
    "mcp_body_limit",
    "off_loop",
]

T = TypeVar("T")

MULTIPART_ENVELOPE = 64 * 1024
"""Room for a multipart body's boundaries, part headers and small fields around its file."""
WORKER_JSON_BYTES = 1024 * 1024
"""A worker's JSON calls (claim, heartbeat, complete, fail) are small."""
PREVIEW_BYTES = 256 * 1024
"""A worker's preview frame (``POST /worker/v1/tasks/{id}/previews``): a small image."""
OFF_LOOP_BYTES = 64 * 1024
"""From this size on, JSON parsing, hashing and base64 run in a thread: a 64 KiB body
parses in about 0.1 ms, a thread hop costs about as much."""
_WORKER = "/worker/v1/"
MCP_PATH = "/mcp"
"""Where the MCP endpoint is mounted: its messages have a limit of their own."""

Refusal = Callable[[str, OmniflashError, dict[str, str]], Response]
"""``(path, error, headers)`` -> the error answered in the shape of the path's dialect."""


def base64_length(size: int) -> int:
    """The length of ``size`` bytes in base64, padding included: ``base64_length(3) == 4``."""
    return (size + 2) // 3 * 4


def mb(size: int) -> str:
    """``size`` bytes in MB (MiB) for a message: ``mb(20 * 2**20) == "20"``."""
    return f"{size / (1024 * 1024):.3g}"


def mcp_body_limit(settings: Settings) -> int:
    """An MCP message can carry ``upload_image``'s largest image in base64, and its envelope."""
    return base64_length(settings.max_upload_bytes) + MULTIPART_ENVELOPE


class Limit(NamedTuple):
    """A body's most bytes, and what to say to a body past them."""

    size: int
    message: str


def body_limit(settings: Settings, method: str, path: str, content_type: str) -> Limit:
    """The most bytes a request's body may hold, by the kind of route it is for."""
    image = settings.max_upload_bytes
    if path == "/v1/uploads/images":
        return Limit(image + MULTIPART_ENVELOPE, f"The image is larger than {mb(image)} MB")
    if path == MCP_PATH:
        size = mcp_body_limit(settings)
        return Limit(
            size,
            f"The MCP message is larger than {mb(size)} MB "
            f"(upload_image takes images of up to {mb(image)} MB)",
        )
    if path.startswith(_WORKER):
        if method == "PUT" and path.endswith("/result"):
            size = settings.max_result_bytes
            return Limit(size, f"The result file is larger than {mb(size)} MB")
        if method == "POST" and path.endswith("/previews"):
            return Limit(PREVIEW_BYTES, f"The preview is larger than {PREVIEW_BYTES // 1024} KiB")
        return Limit(
            WORKER_JSON_BYTES, f"The request body is larger than {mb(WORKER_JSON_BYTES)} MB"
        )
    if path == "/v1/videos" and content_type.startswith("multipart/"):
        # A multipart create carries one image file (``input_reference``) and small fields.
        return Limit(
            image + MULTIPART_ENVELOPE,
            f"The request body is larger than its one image of up to {mb(image)} MB",
        )
    size = settings.max_body_bytes
    return Limit(size, f"The request body is larger than {mb(size)} MB")


async def off_loop(size: int, func: Callable[..., T], *args: Any) -> T:
    """``func(*args)``, in the thread pool when ``size`` bytes make it heavy."""
    if size >= OFF_LOOP_BYTES:
        return await run_in_threadpool(func, *args)
    return func(*args)


class _Guard:
    """``receive`` counting the body's bytes against ``limit`` and timing its chunks."""

    def __init__(self, receive: Receive, limit: Limit, timeout_s: float) -> None:
        self._receive = receive
        self.limit = limit
        self.timeout_s = timeout_s
        self.size = 0
        self.done = False
        self.error: OmniflashError | None = None

    async def receive(self) -> Message:
        if self.error is not None:
            # The body was refused: whoever reads on sees a client that has gone.
            return {"type": "http.disconnect"}
        if self.done:
            return await self._receive()  # only a disconnect comes now: no timer
        try:
            with anyio.fail_after(self.timeout_s):
                message = await self._receive()
        except TimeoutError:
            self.error = RequestTimeout(
                f"No part of the request body arrived for {self.timeout_s:g} seconds"
            )
            raise self.error from None
        if message["type"] != "http.request":
            self.done = True
            return message
        self.size += len(message.get("body", b""))
        if self.size > self.limit.size:
            self.error = PayloadTooLarge(self.limit.message)
            raise self.error
        if not message.get("more_body", False):
            self.done = True
        return message


class BodyLimit:
    """ASGI middleware: every request body bounded by ``body_limit`` and ``body_timeout_s``."""

    def __init__(self, app: ASGIApp, settings: Settings, render: Refusal) -> None:
        self.app = app
        self.settings = settings
        self.render = render

    def refusal(self, scope: Scope, exc: OmniflashError) -> Response:
        """``exc`` answered in the shape of the route's dialect, closing the connection."""
        return self.render(scope["path"], exc, {"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        limit = body_limit(self.settings, scope["method"], scope["path"], content_type)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit.size:
            await self.refusal(scope, PayloadTooLarge(limit.message))(scope, receive, send)
            return
        guard = _Guard(receive, limit, self.settings.body_timeout_s)
        started = False
        swallowed = False

        async def guarded_send(message: Message) -> None:
            nonlocal started, swallowed
            if message["type"] == "http.response.start":
                if guard.error is not None:
                    if message["status"] != guard.error.status:
                        swallowed = True  # the app's own answer to a body it never got
                        return
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
                started = True
            elif swallowed:
                return
            await send(message)

        try:
            await self.app(scope, guard.receive, guarded_send)
        except Exception:
            if guard.error is None or started:
                raise
        if guard.error is not None and not started:
            await self.refusal(scope, guard.error)(scope, guard.receive, send)
