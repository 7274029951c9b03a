"""``/mcp``: the caller's Bearer key first, then the MCP SDK's transport.

``omniflash.api.mcp.server`` (and with it the ``mcp`` package) is imported on the first
MCP request that passes the key check; an API process that never serves an agent stays
small.  A request without a valid key gets the seed's error envelope (HTTP 401) before
any MCP message is read.

Answers are JSON, except for a message that asks for progress (``_meta.progressToken``,
as ``wait_for_task``'s callers send): its answer is a server-sent event stream, the one
way a stateless server can send progress notifications before the result.  Two session
managers of the SDK serve the two kinds; the body is read first to choose.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from omniflash.api.bodies import MCP_PATH, mcp_body_limit
from omniflash.api.deps import Services, authenticate_read_limited
from omniflash.api.omni.errors import seed_error
from omniflash.errors import OmniflashError

__all__ = ["MCP_PATH", "McpEndpoint"]


class McpEndpoint:
    """The ASGI endpoint at ``/mcp``: the Bearer key first, then the SDK's transport.

    The SDK is built on the first MCP request, not with the app: importing it costs an
    API process that never serves an agent some 30 MiB.  Its session manager then runs
    in a task of its own until the app stops (``close``), since the manager's task group
    must be entered and left in one task.
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self._managers: dict[bool, Any] = {}
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    async def _started(self, streaming: bool) -> Any:
        async with self._lock:
            if self._runner is None:
                from omniflash.api.mcp.server import build_server

                for stream in (False, True):
                    server = build_server(self.services)
                    # Builds the SDK's session manager (stateless; JSON answers, or a
                    # stream for calls that asked for progress); its own Starlette app
                    # is not used: this endpoint sits behind the API's middleware.  Its
                    # body limit is the app's (``BodyLimit``), not the SDK's 4 MiB
                    # default: upload_image takes an image of ``max_upload_bytes`` in
                    # base64.
                    server.streamable_http_app(
                        json_response=not stream,
                        stateless_http=True,
                        host="0.0.0.0",
                        max_request_body_size=mcp_body_limit(self.services.settings),
                    )
                    self._managers[stream] = server.session_manager
                self._runner = asyncio.create_task(self._run(), name="mcp-sessions")
        await self._ready.wait()
        return self._managers[streaming]

    async def _run(self) -> None:
        async with self._managers[False].run(), self._managers[True].run():
            self._ready.set()
            await self._stop.wait()

    async def close(self) -> None:
        """Stop the session manager, if an MCP request ever started it."""
        if self._runner is not None:
            self._stop.set()
            await self._runner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            key = await authenticate_read_limited(Request(scope, receive))
        except OmniflashError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            await seed_error(exc, headers=headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["omniflash_key"] = key
        streaming = False
        if scope.get("method") == "POST":
            body = await _whole_body(receive)
            streaming = _asks_for_progress(body)
            receive = _replayed(body, receive)
        manager = await self._started(streaming)
        await manager.handle_request(scope, receive, send)


async def _whole_body(receive: Receive) -> bytes:
    """The request's body (``BodyLimit`` has bounded it), read before the SDK reads it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replayed(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the SDK the body read already, then the client's news."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _asks_for_progress(body: bytes) -> bool:
    """Whether a JSON-RPC message (or a batch) carries ``params._meta.progressToken``."""
    if b"progressToken" not in body:
        return False  # most bodies, an upload's megabytes included, are not parsed twice
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return False
    messages = parsed if isinstance(parsed, list) else [parsed]
    for message in messages:
        params = message.get("params") if isinstance(message, dict) else None
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and meta.get("progressToken") is not None:
            return True
    return False
