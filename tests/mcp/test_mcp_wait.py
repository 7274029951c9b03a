"""``wait_for_task``: MCP progress notifications while a task runs, received by the
official ``mcp`` client from ``omniflash serve``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import LiveServer
from tests.mcp.test_mcp_server import server, session, structured

__all__ = ["server"]

LONG = {
    "model": "Omni-Flash-Ext",
    "input": {"prompt": "a long one", "duration": 10, "resolution": "1080p"},
}


def test_wait_for_task_sends_progress_and_returns_the_ended_task(server: LiveServer) -> None:
    notes: list[tuple[float, float | None, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        notes.append((value, total, message))

    async def run() -> dict[str, Any]:
        async with session(server) as mcp:
            task = structured(
                await mcp.call_tool("generate_video", {**LONG, "idempotency_key": "wait-1"})
            )
            arguments = {"task_id": task["task_id"], "timeout_s": 120}
            return structured(
                await mcp.call_tool("wait_for_task", arguments, progress_callback=progress)
            )

    done = asyncio.run(run())
    assert done["status"] == "completed" and done["terminal"] is True and done["video_url"]
    assert len(notes) >= 2, notes
    values = [value for value, _, _ in notes]
    assert values == sorted(values) and values[-1] == 100, "progress only rises, to the end"
    assert all(total == 100 for _, total, _ in notes)
    assert notes[-1][2] == "completed 100%"


def test_wait_for_task_returns_at_its_timeout_and_refuses_bad_arguments(
    server: LiveServer,
) -> None:
    async def run() -> None:
        async with session(server) as mcp:
            task = structured(
                await mcp.call_tool("generate_video", {**LONG, "idempotency_key": "wait-2"})
            )
            task_id = task["task_id"]
            early = structured(
                await mcp.call_tool("wait_for_task", {"task_id": task_id, "timeout_s": 0.2})
            )
            assert early["task_id"] == task_id
            assert early["terminal"] is False and early["should_poll"] is True
            # Without a progress token the answer is plain JSON: the same result.
            for timeout_s in (0, -1, 600.5, 1e308):
                refused = await mcp.call_tool(
                    "wait_for_task", {"task_id": task_id, "timeout_s": timeout_s}
                )
                assert refused.is_error, timeout_s
                error = refused.structured_content["error"]  # type: ignore[index]
                assert error["code"] == 400 and "timeout_s" in error["message"]
            for bad in ("", "task_" + "x" * 10_000, "task_\x00"):
                refused = await mcp.call_tool("wait_for_task", {"task_id": bad, "timeout_s": 1})
                assert refused.is_error, bad[:12]
                assert refused.structured_content["error"]["code"] in (400, 404)  # type: ignore[index]
            await mcp.call_tool("cancel_task", {"task_id": task_id})
        other = server.create_key(10)
        async with session(server, other) as stranger:
            hidden = await stranger.call_tool("wait_for_task", {"task_id": task_id, "timeout_s": 1})
            assert hidden.is_error
            assert hidden.structured_content["error"]["code"] == 404  # type: ignore[index]

    asyncio.run(run())
    # A lone surrogate cannot be UTF-8: sent as its JSON escape, in raw JSON-RPC.
    raw = (
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": '
        '"wait_for_task", "arguments": {"task_id": "task_\\udc80", "timeout_s": 1}}}'
    )
    answer = httpx.post(
        server.url + "/mcp",
        content=raw.encode(),
        headers={
            "Authorization": f"Bearer {server.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
        },
        timeout=30,
    )
    # The SDK refuses it as JSON-RPC that does not parse, before any tool runs.
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == -32700
