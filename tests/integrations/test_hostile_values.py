"""Client-controlled values that once answered 500, through real server processes.

- a download URL's signature that is not hex (``sig=%C3%A9``), or an expiry no signer
  makes, without any credential: 403;
- a non-ASCII or malformed Bearer token on ``/metrics`` (with a metrics token set), on
  the API, on ``/mcp`` and on the worker endpoints: 401;
- on PostgreSQL, ``%00`` (and other text that cannot be an id) in a task id or an
  ``after`` cursor on every route that takes one, the MCP tools included: 404 or 400,
  before any SQL; then the server answers normally, its read connections all healthy;
- a lone surrogate in a prompt: 400 in each dialect, nothing charged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import LiveServer, running_server, wait_for_task
from tests.integrations.conftest import METRICS_TOKEN
from tests.plain_reads import key_of

pytestmark = pytest.mark.timeout(180)

BAD_IDS = ["%00", "task_%00", "task_01JH00000000000000000000%00", "a%00b", "%ED%A0%80", "x" * 2000]
BAD_BEARERS = ["Bearer é".encode(), b"Bearer \xff", b"Bearer a\x01b", b"Bearer a b", b"Bearer"]


def no_unhandled_errors(server: LiveServer) -> None:
    assert "unhandled error" not in server.log(), server.log()[-3000:]


def test_a_signature_that_is_not_hex_is_403_without_credentials(server: LiveServer) -> None:
    sixty_four = "0" * 64
    for query in (
        "expires=9999999999&sig=%C3%A9",
        "expires=9999999999&sig=%00",
        "expires=9999999999&sig=" + "é" * 64,
        "expires=9999999999&sig=" + "A" * 64,
        "expires=9999999999&sig=" + sixty_four[:-1],
        f"expires={'9' * 5000}&sig={sixty_four}",
        f"expires={2**63}&sig={sixty_four}",
        f"expires=-1&sig={sixty_four}",
        f"expires=9999999999&sig={sixty_four}",
    ):
        for method in ("GET", "HEAD"):
            response = httpx.request(method, f"{server.url}/v1/files/results/x.mp4?{query}")
            assert response.status_code in (400, 403), (query, response.status_code)
            if method == "GET":
                assert response.json()["error"]["code"] == response.status_code
    for path in ("/v1/files/%00?expires=9999999999&sig=%C3%A9", "/v1/files/%ED%A0%80?sig=00"):
        assert httpx.get(server.url + path).status_code in (400, 403, 404)
    no_unhandled_errors(server)


def test_a_malformed_bearer_token_is_401_at_every_door(server: LiveServer) -> None:
    good = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert good.status_code == 200
    for header in BAD_BEARERS:
        sent = {"Authorization": header}
        for method, path in (
            ("GET", "/metrics"),
            ("GET", "/v1/tasks"),
            ("GET", "/v1/account"),
            ("GET", "/v1/videos"),
            ("POST", "/v1/videos/generations"),
            ("POST", "/v1/uploads/images"),
            ("POST", "/mcp"),
            ("GET", "/worker/v1/config"),
            ("POST", "/worker/v1/claim"),
        ):
            response = httpx.request(method, server.url + path, headers=sent, json={})
            assert response.status_code == 401, (header, path, response.text)
    no_unhandled_errors(server)


def _mcp(server: LiveServer, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One ``tools/call`` as raw JSON-RPC (so any text can be sent); its result."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    response = httpx.post(
        server.url + "/mcp",
        content=json.dumps(body),
        headers={
            "Authorization": f"Bearer {server.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18",
        },
        timeout=30,
    )
    if response.status_code == 400:
        # The SDK's JSON parser refuses a lone surrogate itself, as a JSON-RPC parse error.
        assert response.json()["error"]["code"] == -32700, response.text
        return {"isError": True, "structuredContent": {"error": {"code": 400}}}
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


def _balance(http: httpx.Client) -> float:
    return float(http.get("/v1/account").json()["data"]["balance"])


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[LiveServer]:
    with running_server(
        Path(tmp_path_factory.mktemp("hostile-pg")),
        "--workers",
        "1",
        OMNIFLASH_DATABASE_URL=postgres_url,
    ) as live:
        yield live


@pytest.mark.postgres
def test_ids_and_cursors_that_cannot_be_ours_never_reach_postgres(
    pg_server: LiveServer, postgres_url: str
) -> None:
    server = pg_server
    with server.client() as http:
        start = _balance(http)
        for bad in BAD_IDS:
            for method, path, status in (
                ("GET", f"/v1/tasks/{bad}", 404),
                ("GET", f"/v1/tasks/{bad}?language=en", 404),
                ("POST", f"/v1/tasks/{bad}/cancel", 404),
                ("GET", f"/v1/tasks?after={bad}", 400),
                ("GET", f"/v1/videos/{bad}", 404),
                ("DELETE", f"/v1/videos/{bad}", 404),
                ("GET", f"/v1/videos/{bad}/content", 404),
                ("POST", f"/v1/videos/{bad}/remix", 404),
                ("GET", f"/v1/videos?after={bad}", 400),
                ("GET", f"/v1/videos?after={bad}&order=asc", 400),
            ):
                kwargs: dict[str, Any] = {"json": {"prompt": "a dog"}} if method == "POST" else {}
                response = http.request(method, path, **kwargs)
                assert response.status_code == status, (method, path, response.text)
                assert response.json()["error"]
            for tool in ("get_task", "cancel_task"):
                task_id = bad.replace("%00", "\x00").replace("%ED%A0%80", "\ud800")
                result = _mcp(server, tool, {"task_id": task_id})
                assert result["isError"], result
                assert result["structuredContent"]["error"]["code"] in (400, 404)
        assert _balance(http) == start
        # The server answers normally: a whole task, its reads, its page, its MCP view.
        submitted = http.post(
            "/v1/videos/generations",
            json={"model": "Omni-Flash-Ext", "prompt": "after the storm", "duration": 4},
        )
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["data"][0]["task_id"]
        assert wait_for_task(http, task_id)["status"] == "completed"
        assert http.get(f"/v1/videos/{task_id}").json()["status"] == "completed"
        assert http.get("/v1/tasks").json()["data"][0]["id"] == task_id
        assert http.get(f"/v1/videos?after={task_id}&order=asc").json()["data"] == []
        assert _mcp(server, "get_task", {"task_id": task_id})["structuredContent"]["terminal"]
    # No read connection was left mid-statement or dropped unclosed.
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            states = conn.execute(
                sa.text(
                    "SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'omniflash reads'"
                )
            ).scalars()
            assert all(state == "idle" for state in states)
    finally:
        engine.dispose()
    no_unhandled_errors(server)


@pytest.mark.postgres
def test_a_lone_surrogate_in_a_prompt_is_400_in_every_dialect(pg_server: LiveServer) -> None:
    server = pg_server
    surrogate = json.dumps({"prompt": "a \ud800 cat"})[1:-1]  # '"prompt": "a \ud800 cat"'
    with server.client() as http:
        start = _balance(http)
        tasks_before = [t["id"] for t in http.get("/v1/tasks").json()["data"]]
        ext = http.post(
            "/v1/videos/generations",
            content='{"model": "Omni-Flash-Ext", "duration": 4, ' + surrogate + "}",
            headers={"Content-Type": "application/json"},
        )
        assert ext.status_code == 400 and "prompt" in ext.json()["error"]["message"], ext.text
        for _ in range(2):  # a retrying client is refused again, and pays nothing
            openai = http.post(
                "/v1/videos",
                content="{" + surrogate + "}",
                headers={"Content-Type": "application/json", "Idempotency-Key": "k-1"},
            )
            assert openai.status_code == 400 and openai.json()["error"]["param"] == "prompt"
        result = _mcp(
            server,
            "generate_video",
            {
                "model": "Omni-Flash-Ext",
                "input": {"prompt": "a \ud800 cat", "duration": 4},
                "idempotency_key": "k-2",
            },
        )
        assert result["isError"] and result["structuredContent"]["error"]["code"] == 400
        time.sleep(0.2)
        assert _balance(http) == start
        assert [t["id"] for t in http.get("/v1/tasks").json()["data"]] == tasks_before
    no_unhandled_errors(server)


@pytest.mark.postgres
def test_mcp_tool_arguments_follow_the_text_rules(pg_server: LiveServer) -> None:
    server = pg_server
    png = (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLv"
        "AAAAAElFTkSuQmCC"
    )
    with server.client() as http:
        start = _balance(http)
        before = [t["id"] for t in http.get("/v1/tasks").json()["data"]]
    for tool, arguments, field in (
        (
            "generate_video",
            {"model": "Omni-Flash-Ext", "input": {"prompt": "a\x00cat"}, "idempotency_key": "a"},
            "prompt",
        ),
        (
            "generate_video",
            {
                "model": "Omni-Flash-Ext",
                "input": {"prompt": "a cat", "callback_url": "https://x.y/\x1b"},
                "idempotency_key": "b",
            },
            "callback_url",
        ),
        (
            "generate_video",
            {"model": "Omni-Flash-Ext\x00", "input": {"prompt": "a cat"}, "idempotency_key": "c"},
            "model",
        ),
        (
            "generate_video",
            {"model": "Omni-Flash-Ext", "input": {"prompt": "a cat"}, "idempotency_key": "d\x00"},
            "idempotency_key",
        ),
        ("upload_image", {"image_base64": png, "filename": "cat\x00.png"}, "filename"),
        ("get_task", {"task_id": "task_01JH0000000000000000000000", "language": "e\x00"}, ""),
        ("get_model_docs", {"model": "Omni\x7f"}, "model"),
        ("list_models", {"cursor": "\x85"}, "cursor"),
    ):
        result = _mcp(server, tool, arguments)
        assert result["isError"], (tool, result)
        error = result["structuredContent"]["error"]
        assert error["code"] in (400, 404) and field in error["message"], (tool, error)
    # ``²`` is a digit to ``str.isdigit`` but no integer to ``int``: the first page, not a crash.
    assert not _mcp(server, "list_models", {"cursor": "²"})["isError"]
    with server.client() as http:
        assert _balance(http) == start
        assert [t["id"] for t in http.get("/v1/tasks").json()["data"]] == before
    uploads = list((server.data_dir / "blobs" / "uploads").glob("*"))
    assert uploads == []
    no_unhandled_errors(server)


@pytest.mark.postgres
def test_a_prompt_stored_before_the_rules_is_served_everywhere(
    pg_server: LiveServer, postgres_url: str
) -> None:
    """A row written before the text rule held (a lone surrogate in its prompt) is served,
    with U+FFFD in its place, by every read of both dialects and the MCP tool."""
    import dataclasses

    from omniflash.contract import parse_generation_request
    from omniflash.store import Store

    server = pg_server
    store = Store(postgres_url, migrate=False)
    try:
        key = key_of(store, server.api_key)
        assert key is not None
        spec = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "x", "duration": 4})
        spec = dataclasses.replace(spec, prompt="a \ud800 cat")
        task = store.tasks.submit(key, spec, millicredits=0, estimated_time=5, seed=1).task
    finally:
        store.close()
    with server.client() as http:
        for path in (
            f"/v1/tasks/{task.id}",
            "/v1/tasks",
            f"/v1/videos/{task.id}",
            "/v1/videos",
            f"/v1/tasks/{task.id}?language=ja",
        ):
            response = http.get(path)
            assert response.status_code == 200, (path, response.text)
        assert "a \ufffd cat" in http.get(f"/v1/videos/{task.id}").text
        wait_for_task(http, task.id)
    result = _mcp(server, "get_task", {"task_id": task.id})
    assert not result["isError"], result
    no_unhandled_errors(server)
