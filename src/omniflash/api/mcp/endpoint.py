"""``/mcp``: the caller's Bearer key first, then the MCP SDK's transport.

``omniflash.api.mcp.server`` (and with it the ``mcp`` package) is imported on the first
MCP request that passes the key check; an API process that never serves an agent stays
small.  A request without a valid key gets the seed's error envelope (HTTP 401) before
any MCP message is read.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

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
        self._manager: Any = None
        self._runner: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    async def _started(self) -> Any:
        async with self._lock:
            if self._runner is None:
                from omniflash.api.mcp.server import build_server

                server = build_server(self.services)
                # Builds the SDK's session manager (stateless, JSON answers); its own
                # Starlette app is not used: this endpoint sits behind the API's middleware.
                # Its body limit is the app's (``BodyLimit``), not the SDK's 4 MiB default:
                # upload_image takes an image of ``max_upload_bytes`` in base64.
                server.streamable_http_app(
                    json_response=True,
                    stateless_http=True,
                    host="0.0.0.0",
                    max_request_body_size=mcp_body_limit(self.services.settings),
                )
                self._manager = server.session_manager
                self._runner = asyncio.create_task(self._run(), name="mcp-sessions")
        await self._ready.wait()
        return self._manager

    async def _run(self) -> None:
        async with self._manager.run():
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
        manager = await self._started()
        await manager.handle_request(scope, receive, send)
