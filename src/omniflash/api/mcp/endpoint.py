"""``/mcp`` without loading the MCP SDK until an agent calls it.

``omniflash.api.mcp.server`` (and with it the ``mcp`` package) is imported on the first
request to ``/mcp``; an API process that never serves an agent stays small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from omniflash.api.deps import Services
    from omniflash.api.mcp.server import McpEndpoint

__all__ = ["MCP_PATH", "LazyMcpEndpoint"]

MCP_PATH = "/mcp"


class LazyMcpEndpoint:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._endpoint: McpEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._endpoint is None:
            from omniflash.api.mcp.server import McpEndpoint

            self._endpoint = McpEndpoint(self.services)
        await self._endpoint(scope, receive, send)

    async def close(self) -> None:
        if self._endpoint is not None:
            await self._endpoint.close()
