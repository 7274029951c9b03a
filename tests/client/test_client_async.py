"""``omniflash.client.AsyncClient``: the same surface as ``Client``, with ``await``."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from omniflash.client import (
    APITimeoutError,
    AsyncClient,
    AsyncTask,
    AuthenticationError,
    ConflictError,
    IdempotencyError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RetryPolicy,
    TaskCancelledError,
    TaskFailedError,
    WaitPolicy,
)
from omniflash.media.encode import probe_mp4
from tests.client.stubs import (
    ImageHost,
    Reply,
    ScriptedServer,
    error_body,
    png_bytes,
    submitted_body,
    task_body,
)
from tests.conftest import LiveServer, free_port

T = TypeVar("T")
FAST_RETRY = RetryPolicy(max_retries=3, backoff=0.01)
FAST_WAIT = WaitPolicy(first_delay=0.2, interval=0.2, timeout=60)


def run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(make())


def client_for(server: LiveServer, key: str | None = None) -> AsyncClient:
    return AsyncClient(server.url, key or server.api_key, wait=FAST_WAIT)


async def until_status(client: AsyncClient, task_id: str, status: str) -> AsyncTask:
    deadline = time.monotonic() + 30
    while (task := await client.tasks.get(task_id)).status != status:
        assert time.monotonic() < deadline, f"{task_id} still {task.status}"
        await asyncio.sleep(0.1)
    return task


def test_generate_and_wait_with_a_local_image(server: LiveServer, tmp_path: Path) -> None:
    image = tmp_path / "ref.png"
    image.write_bytes(png_bytes())
    seen: list[int] = []

    async def record(task: AsyncTask) -> None:
        await asyncio.sleep(0)
        seen.append(task.progress)

    async def scenario() -> AsyncTask:
        async with client_for(server) as client:
            done = await client.videos.generate_and_wait(
                "a kite among references",
                duration=4,
                resolution="720p",
                aspect_ratio="1:1",
                images=[image],
                generation_type="reference",
                on_progress=record,
            )
            await client.tasks.download(done, tmp_path / "out.mp4")
            return done

    done = run(scenario)
    assert done.status == "completed" and seen[-1] == 100
    assert done.raw["request"]["mode"] == "reference"
    info = probe_mp4(tmp_path / "out.mp4")
    assert (info.width, info.height, info.frames) == (720, 720, 96)


def test_list_get_and_cancel(server: LiveServer, fresh_key: str, images: ImageHost) -> None:
    url = images.held_url()

    async def scenario() -> None:
        async with client_for(server, fresh_key) as client:
            done = await client.videos.generate_and_wait("first", duration=4)
            held = await client.videos.generate("second", duration=4, images=[url])
            page = await client.tasks.list(limit=10)
            assert [t.id for t in page] == [held.id, done.id]
            assert [t.id async for t in client.tasks.iter_all(page_size=1)] == [held.id, done.id]
            assert (await client.tasks.get(done.id)).prompt == "first"
            await until_status(client, held.id, "processing")
            assert (await client.tasks.cancel(held.id)).status == "cancelled"
            with pytest.raises(TaskCancelledError):
                await client.tasks.wait(held.id, first_delay=0)
            with pytest.raises(ConflictError):
                await client.tasks.cancel(done.id)

    try:
        run(scenario)
    finally:
        images.release(url)


def test_errors_and_failed_tasks(server: LiveServer) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/gone.png"

    async def scenario() -> None:
        async with AsyncClient(server.url, "of_wrong", retry=FAST_RETRY) as bad:
            with pytest.raises(AuthenticationError):
                await bad.tasks.get("task_x")
        async with client_for(server) as client:
            with pytest.raises(InvalidRequestError) as caught:
                await client.videos.generate("x", resolution="480p")
            assert caught.value.type == "invalid_resolution"
            with pytest.raises(NotFoundError):
                await client.tasks.cancel("task_00000000000000000000000000")
            with pytest.raises(TaskFailedError) as failed:
                await client.videos.generate_and_wait("x", duration=4, images=[unreachable])
            assert "image_urls[0]" in failed.value.reason

    run(scenario)


def test_idempotent_replay(server: LiveServer, fresh_key: str) -> None:
    async def scenario() -> None:
        async with client_for(server, fresh_key) as client:
            first = await client.videos.generate("once", duration=4, idempotency_key="a-1")
            again = await client.videos.generate("once", duration=4, idempotency_key="a-1")
            assert again.id == first.id and again.replayed
            with pytest.raises(IdempotencyError):
                await client.videos.generate("other", duration=4, idempotency_key="a-1")
            assert len(await client.tasks.list()) == 1
            await client.tasks.wait(first.id)

    run(scenario)


def test_submit_retries_only_under_a_key(stub: ScriptedServer) -> None:
    stub_path = "/v1/videos/generations"
    busy = Reply(503, error_body(503, "busy", "api_error"), {"Retry-After": "0"})
    stub.on("POST", stub_path, busy, Reply(200, submitted_body("task_A")))

    async def scenario() -> None:
        async with AsyncClient(stub.url, "k", retry=FAST_RETRY) as client:
            assert (await client.videos.generate("x")).id == "task_A"
            keys = [c.headers["idempotency-key"] for c in stub.calls("POST", stub_path)]
            assert len(keys) == 2 and keys[0] == keys[1]
            stub.on("POST", stub_path, busy)
            with pytest.raises(InternalServerError):
                await client.request("POST", stub_path, json={}, mode="submit")
            assert len(stub.calls("POST", stub_path)) == 3

    run(scenario)


def test_wait_deadline_and_download_retry(stub: ScriptedServer, tmp_path: Path) -> None:
    url = f"{stub.url}/v1/files/a.mp4"
    stub.on("GET", "/v1/tasks/slow", Reply(200, task_body("slow", "pending")))
    stub.on(
        "GET",
        "/v1/tasks/done",
        Reply(200, task_body("done", "completed", 100, result={"videos": [{"url": [url]}]})),
    )
    stub.on("GET", "/v1/files/a.mp4", Reply(drop=True), Reply(200, b"video bytes"))

    async def scenario() -> None:
        async with AsyncClient(stub.url, "k", retry=FAST_RETRY) as client:
            with pytest.raises(APITimeoutError) as caught:
                await client.tasks.wait("slow", first_delay=0, poll_interval=0.05, timeout=0.3)
            assert caught.value.task_id == "slow"
            done = await client.tasks.wait("done", first_delay=0)
            await client.tasks.download(done, tmp_path / "a.mp4")

    run(scenario)
    assert (tmp_path / "a.mp4").read_bytes() == b"video bytes"
    assert len(stub.calls("GET", "/v1/files/a.mp4")) == 2


def test_sync_and_async_surfaces_match() -> None:
    from omniflash.client import Client

    def public(obj: object) -> set[str]:
        return {n for n in dir(obj) if not n.startswith("_")}

    sync, async_ = Client("http://x", "k"), AsyncClient("http://x", "k")
    try:
        assert public(sync) == public(async_)
        assert public(sync.videos) == public(async_.videos)
        assert public(sync.tasks) == public(async_.tasks)
        assert inspect.iscoroutinefunction(async_.tasks.get)
        assert not inspect.iscoroutinefunction(sync.tasks.get)
    finally:
        sync.close()
        asyncio.run(async_.close())
