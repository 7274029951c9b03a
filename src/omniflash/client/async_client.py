"""``AsyncClient``: the asyncio SDK, the same calls as ``Client`` with ``await``.

It carries out the same flows of ``omniflash.client.core`` with ``httpx.AsyncClient``;
the documentation of each call is on ``Client``.

>>> async with AsyncClient("http://127.0.0.1:8000", "of_...") as client:  # doctest: +SKIP
...     task = await client.videos.generate_and_wait(prompt="a red kite", duration=4)
...     await client.tasks.download(task, "kite.mp4")
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar, Unpack

import httpx

from omniflash.client import base, core, effects
from omniflash.client.models import Account, Task, TaskPage, Upload
from omniflash.client.task_events import TaskEvent

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient(base.BaseClient[httpx.AsyncBaseTransport]):
    """``Client`` for asyncio: use it as an async context manager, or ``await close()``.

    ``on_progress`` callbacks may be plain functions or coroutine functions.
    """

    def _connect(
        self, transport: httpx.AsyncBaseTransport | None, timeout: float | httpx.Timeout
    ) -> None:
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=True)
        self.videos, self.tasks = AsyncVideos(self), AsyncTasks(self)
        self.uploads = AsyncUploads(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _run(self, flow: effects.Flow[T]) -> T:
        with effects.Run(flow) as run:
            async for _ in self._steps(run):
                pass
            return run.result

    async def _steps(self, run: effects.Run[Any]) -> AsyncIterator[TaskEvent]:
        """``Client._steps``, awaited."""
        async with contextlib.AsyncExitStack() as streams:
            while (effect := run.next()) is not None:
                if isinstance(effect, effects.Emit):
                    yield effect.event
                    run.send(None)
                    continue
                try:
                    run.send(await self._carry_out(effect, streams))
                except httpx.TransportError as exc:
                    run.throw(exc)

    async def _carry_out(self, effect: effects.Effect, streams: contextlib.AsyncExitStack) -> Any:
        match effect:
            case effects.Open() as opening:
                response = await self._http.send(opening.request(self._http), stream=True)
                streams.push_async_callback(response.aclose)
                if response.is_error:
                    await response.aread()
                return effects.Opened(response, response.aiter_raw())
            case effects.Read(opened):
                return await anext(opened.handle, b"")
            case effects.Close(opened):
                with contextlib.suppress(httpx.HTTPError):
                    await opened.response.aclose()
                return None
            case effects.Send(method, url, headers, json, params, files):
                request = self._http.build_request(
                    method, url, json=json, params=params, headers=headers, files=files
                )
                return await self._http.send(request)
            case effects.Fetch():
                return await self._fetch(effect)
            case effects.Report(callback, task):
                outcome = callback(task)
                return await outcome if inspect.isawaitable(outcome) else outcome
            case effects.Sleep(seconds):
                await asyncio.sleep(seconds)
                return None
            case _:
                raise TypeError(f"not an effect to carry out here: {effect!r}")

    async def _fetch(self, fetch: effects.Fetch) -> effects.Fetched:
        async with self._http.stream("GET", fetch.url, headers=fetch.headers) as response:
            if response.is_error:
                await response.aread()
                return effects.Fetched(response)
            with fetch.open() as sink:
                async for chunk in response.aiter_bytes(effects.CHUNK_BYTES):
                    sink.write(chunk)
        return effects.Fetched(response, sink.size)

    async def request(
        self, method: str, path: str, **options: Unpack[core.RequestOptions]
    ) -> httpx.Response:
        """``Client.request``, awaited."""
        return await self._run(self._core.request(method, path, **options))

    async def account(self) -> Account:
        return await self._run(self._core.account())

    async def download(
        self, task: Task | str, path: str | os.PathLike[str], *, index: int = 0
    ) -> Path:
        """``await client.tasks.download(task, path)``."""
        return await self.tasks.download(task, path, index=index)


class AsyncVideos:
    """``client.videos`` of an ``AsyncClient``: see ``Client.videos``."""

    def __init__(self, client: AsyncClient) -> None:
        self._run = client._run
        self._core = client._core

    async def generate(self, prompt: str, **options: Unpack[core.GenerateOptions]) -> Task:
        return await self._run(self._core.generate(prompt, **options))

    async def generate_and_wait(
        self, prompt: str, **options: Unpack[core.GenerateAndWaitOptions]
    ) -> Task:
        return await self._run(self._core.generate_and_wait(prompt, **options))


class AsyncUploads:
    """``client.uploads`` of an ``AsyncClient``: see ``Client.uploads``."""

    def __init__(self, client: AsyncClient) -> None:
        self._run = client._run
        self._core = client._core

    async def create(
        self, image: str | os.PathLike[str] | bytes, *, filename: str | None = None
    ) -> Upload:
        return await self._run(self._core.upload(image, filename))


class AsyncTasks:
    """``client.tasks`` of an ``AsyncClient``: see ``Client.tasks``."""

    def __init__(self, client: AsyncClient) -> None:
        self._run = client._run
        self._core = client._core
        self._steps = client._steps

    async def get(self, task_id: str) -> Task:
        return await self._run(self._core.get_task(task_id))

    async def list(self, *, limit: int = 20, after: str | None = None) -> TaskPage[Task]:
        return await self._run(self._core.list_tasks(limit=limit, after=after))

    async def iter_all(self, *, page_size: int = 100) -> AsyncIterator[Task]:
        after: str | None = None
        while True:
            page = await self.list(limit=page_size, after=after)
            for task in page:
                yield task
            if (after := base.next_page(page)) is None:
                return

    async def cancel(self, task_id: str) -> Task:
        return await self._run(self._core.cancel(task_id))

    async def events(
        self, task_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[TaskEvent]:
        """``Client.tasks.events``, as an async iterator."""
        with effects.Run(self._core.events(task_id, last_event_id=last_event_id)) as run:
            async for event in self._steps(run):
                yield event

    async def wait(self, task_id: str, **options: Unpack[core.WaitOptions]) -> Task:
        return await self._run(self._core.wait(task_id, **options))

    async def download(
        self, task: Task | str, path: str | os.PathLike[str], *, index: int = 0
    ) -> Path:
        return await self._run(self._core.download(task, path, index=index))
