"""The MCP server, driven by the official ``mcp`` client over streamable HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ResourceLink
from PIL import Image

from mcp import ClientSession
from tests.conftest import LiveServer, running_server

pytestmark = pytest.mark.timeout(90)

TOOLS = {
    "list_models",
    "get_model_docs",
    "get_model_schema",
    "upload_image",
    "generate_video",
    "get_task",
    "wait_for_task",
    "cancel_task",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running_server(
        tmp_path_factory.mktemp("mcp"), "--workers", "1", OMNIFLASH_ALLOW_PRIVATE_URLS="0"
    ) as live:
        yield live


@asynccontextmanager
async def session(server: LiveServer, key: str | None = None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key or server.api_key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(server.url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as mcp,
    ):
        await mcp.initialize()
        yield mcp


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def red_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (220, 20, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_no_key_is_401_before_any_mcp_message(server: LiveServer) -> None:
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.post(server.url + "/mcp", json=hello, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_whole_generation_upload_generate_replay_poll_download(server: LiveServer) -> None:
    async def run() -> None:
        async with session(server) as mcp:
            assert {t.name for t in (await mcp.list_tools()).tools} == TOOLS
            models = structured(await mcp.call_tool("list_models", {"limit": 10}))
            assert [m["id"] for m in models["data"]] == ["Omni-Flash-Ext"]
            schema = structured(
                await mcp.call_tool("get_model_schema", {"model": "Omni-Flash-Ext"})
            )
            assert "prompt" in schema["input_schema"]["properties"]
            docs = structured(await mcp.call_tool("get_model_docs", {"model": "Omni-Flash-Ext"}))
            assert "## Parameters" in docs["markdown"]

            image = base64.b64encode(red_png()).decode()
            upload = structured(
                await mcp.call_tool("upload_image", {"image_base64": image, "filename": "red.png"})
            )
            assert upload["content_type"] == "image/png"
            arguments = {
                "model": "Omni-Flash-Ext",
                "input": {
                    "prompt": "zoom into the red",
                    "duration": 4,
                    "image_urls": [upload["url"]],
                },
                "idempotency_key": "mcp-run-1",
            }
            first = structured(await mcp.call_tool("generate_video", arguments))
            assert first["kind"] == "task" and first["replayed"] is False
            assert first["should_poll"] is True and first["next_poll_after_seconds"] > 0
            assert first["idempotency_key"] == "mcp-run-1"
            again = structured(await mcp.call_tool("generate_video", arguments))
            assert again["task_id"] == first["task_id"] and again["replayed"] is True

            deadline = time.monotonic() + 60
            while True:
                result = await mcp.call_tool("get_task", {"task_id": first["task_id"]})
                task = structured(result)
                if task["terminal"]:
                    break
                assert task["should_poll"] and time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert task["status"] == "completed", task
            assert task["should_poll"] is False and task["task"]["progress"] == 100
            (link,) = [c for c in result.content if isinstance(c, ResourceLink)]
            assert link.mime_type == "video/mp4" and str(link.uri) == task["video_url"]
        async with httpx.AsyncClient() as http:
            video = await http.get(task["video_url"])
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"

    asyncio.run(run())


def test_api_errors_are_tool_errors_an_agent_can_correct(server: LiveServer) -> None:
    async def run() -> None:
        async with session(server) as mcp:
            bad = await mcp.call_tool(
                "generate_video",
                {
                    "model": "Omni-Flash-Ext",
                    "input": {"prompt": "x", "duration": 5},
                    "idempotency_key": "b1",
                },
            )
            assert bad.is_error
            assert bad.structured_content == {
                "error": {
                    "code": 400,
                    "type": "invalid_duration",
                    "message": "invalid duration 5, must be one of 4/6/8/10",
                }
            }
            assert "invalid_duration" in bad.content[0].text
            missing = await mcp.call_tool("get_task", {"task_id": "task_nope"})
            assert (
                missing.is_error
                and missing.structured_content["error"]["type"] == "not_found_error"
            )
            image = await mcp.call_tool(
                "get_model_schema", {"model": "Omni-Flash-Ext", "operation": "image_generation"}
            )
            assert image.is_error
            not_image = await mcp.call_tool(
                "upload_image",
                {"image_base64": base64.b64encode(b"hello").decode(), "filename": "a.png"},
            )
            assert not_image.is_error

    asyncio.run(run())


def test_cancel_is_terminal_and_refunded(server: LiveServer) -> None:
    async def run() -> None:
        async with session(server) as mcp:
            arguments = {
                "model": "Omni-Flash-Ext",
                "input": {"prompt": "a long one", "duration": 10, "resolution": "4k"},
                "idempotency_key": "cancel-me",
            }
            task = structured(await mcp.call_tool("generate_video", arguments))
            cancelled = structured(await mcp.call_tool("cancel_task", {"task_id": task["task_id"]}))
            assert cancelled["status"] == "cancelled"
            assert cancelled["terminal"] is True and cancelled["should_poll"] is False
            assert cancelled["task"]["cost"] == 0
            zh = structured(
                await mcp.call_tool("get_task", {"task_id": task["task_id"], "language": "zh"})
            )
            assert zh["task"]["error"]["message"].startswith("已取消")

    asyncio.run(run())
