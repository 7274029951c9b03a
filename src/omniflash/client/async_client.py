"""``AsyncClient``: the asyncio SDK, the same surface as ``Client`` with ``await``.

>>> async with AsyncClient("http://127.0.0.1:8000", "of_...") as client:  # doctest: +SKIP
...     task = await client.videos.generate_and_wait(prompt="a red kite", duration=4)
...     await task.download("kite.mp4")
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx

from omniflash.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    OmniflashClientError,
    PermissionDeniedError,
    RateLimitError,
    TaskCancelledError,
    TaskFailedError,
    error_from_response,
)
from omniflash.client.images import ImageInput
from omniflash.client.models import (
    Account,
    AsyncTask,
    GenerationRequest,
    TaskPage,
    TaskStatus,
)
from omniflash.client.protocol import (
    RetryPolicy,
    WaitPolicy,
    absolute,
    check,
    default_headers,
    envelope,
    new_idempotency_key,
    parse_submit,
    payload,
    resolve_settings,
    same_origin,
    temp_path_for,
    transport_error,
)

__all__ = ["AsyncClient"]

RetryMode = Literal["read", "submit"]
ProgressCallback = Callable[[AsyncTask], Awaitable[object] | object]


class AsyncClient:
    """A connection to an Omni-Flash-Ext server.

    ``base_url`` and ``api_key`` default to ``OMNIFLASH_SERVER`` and ``OMNIFLASH_API_KEY``.
    Use it as an async context manager, or ``await close()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 3,
        retry: RetryPolicy | None = None,
        wait: WaitPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, self.api_key = resolve_settings(base_url, api_key)
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self.wait_policy = wait or WaitPolicy()
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=True)
        self.videos = Videos(self)
        self.tasks = Tasks(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        mode: RetryMode = "read",
    ) -> httpx.Response:
        """One API call with the retry policy; raises the SDK's exceptions."""
        all_headers = default_headers(self.api_key) | (headers or {})
        retries = self.retry.retries_for(mode, all_headers)
        submit = mode == "submit"
        url = absolute(path, self.base_url)
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers=all_headers,
                )
                check(response)
                return response
            except httpx.TransportError as exc:
                error: OmniflashClientError = transport_error(exc, f"{method} {url}")
                if attempt >= retries or not self.retry.retryable(error, submit=submit):
                    raise error from exc
            except APIStatusError as exc:
                if attempt >= retries or not self.retry.retryable(exc, submit=submit):
                    raise
                error = exc
            await asyncio.sleep(self.retry.pause(error, attempt))
            attempt += 1

    async def account(self) -> Account:
        """The key's balance and limits (``GET /v1/account``, an omniflash extra)."""
        return Account.from_data(payload(await self.request("GET", "/v1/account")) or {})

    async def download(
        self, task: AsyncTask | str, path: str | os.PathLike[str], *, index: int = 0
    ) -> Path:
        """Save a result video to ``path``: retried, written to a temp file then renamed.

        ``task`` is a ``Task`` or a result URL.  An expired link of a ``Task`` is renewed
        once by fetching the task again; nothing is ever submitted again.
        """
        target = Path(path)
        url = _result_url(task, index)
        refreshed = False
        attempt = 0
        while True:
            try:
                await self._fetch_to(url, target)
                return target
            except (PermissionDeniedError, NotFoundError):
                if isinstance(task, str) or refreshed:
                    raise
                refreshed = True
                task = await self.tasks.get(task.id)
                url = _result_url(task, index)
                continue
            except httpx.TransportError as exc:
                error: OmniflashClientError = transport_error(exc, "download")
                if attempt >= self.retry.max_retries:
                    raise error from exc
            except (RateLimitError, InternalServerError) as exc:
                if attempt >= self.retry.max_retries:
                    raise
                error = exc
            await asyncio.sleep(self.retry.pause(error, attempt))
            attempt += 1

    async def _fetch_to(self, url: str, target: Path) -> None:
        url = absolute(url, self.base_url)
        # The key goes only to the API server itself, never to a CDN holding results.
        headers = default_headers(self.api_key) if same_origin(url, self.base_url) else None
        tmp = temp_path_for(target)
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_response(response)
                expected = response.headers.get("content-length")
                size = 0
                with open(tmp, "wb") as out:
                    async for chunk in response.aiter_bytes(1 << 20):
                        out.write(chunk)
                        size += len(chunk)
            if expected is not None and expected.isdigit() and int(expected) != size:
                raise httpx.RemoteProtocolError(f"got {size} of {expected} bytes")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _result_url(task: AsyncTask | str, index: int) -> str:
    if isinstance(task, str):
        return task
    urls = task.video_urls
    if not urls:
        raise OmniflashClientError(f"task {task.id} has no video (status {task.status})")
    return urls[index]


class Videos:
    """``client.videos``: submit generations."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def generate(
        self,
        prompt: str,
        *,
        duration: int | None = None,
        resolution: str | None = None,
        aspect_ratio: str | None = None,
        images: Sequence[ImageInput] = (),
        video: str | None = None,
        generation_type: str | None = None,
        seed: int | None = None,
        idempotency_key: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> AsyncTask:
        """Submit a task; returns it with status ``submitted`` (see ``tasks.wait``).

        A random Idempotency-Key is sent unless one is given, so a retried submit is
        charged once; reuse your own key to make a submit safe across restarts.
        """
        body = GenerationRequest(
            prompt=prompt,
            duration=duration,
            resolution=resolution,
            aspect_ratio=aspect_ratio,
            images=images,
            video=video,
            generation_type=generation_type,
            seed=seed,
            extra=extra_body,
        ).to_body()
        key = idempotency_key or new_idempotency_key()
        response = await self._client.request(
            "POST",
            "/v1/videos/generations",
            json=body,
            headers={"Idempotency-Key": key},
            mode="submit",
        )
        submitted = parse_submit(response)
        raw = {"task_id": submitted.id, "status": submitted.status, "replayed": submitted.replayed}
        return AsyncTask(id=submitted.id, status=submitted.status, raw=raw, client=self._client)

    async def generate_and_wait(
        self,
        prompt: str,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **params: Any,
    ) -> AsyncTask:
        """``generate`` then ``tasks.wait``: the completed task, or ``TaskFailedError``."""
        task = await self.generate(prompt, **params)
        return await self._client.tasks.wait(task.id, timeout=timeout, on_progress=on_progress)


class Tasks:
    """``client.tasks``: get, list, cancel and wait for tasks."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def _task(self, data: Any) -> AsyncTask:
        return AsyncTask(
            **AsyncTask.fields_from(data if isinstance(data, dict) else {}), client=self._client
        )

    async def get(self, task_id: str) -> AsyncTask:
        return self._task(payload(await self._client.request("GET", f"/v1/tasks/{task_id}")))

    async def list(self, *, limit: int = 20, after: str | None = None) -> TaskPage[AsyncTask]:
        """One page of this key's tasks, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        response = await self._client.request("GET", "/v1/tasks", params=params)
        body = envelope(response)
        data = body.get("data")
        items = [self._task(item) for item in data] if isinstance(data, list) else []
        next_after = body.get("next_after")
        return TaskPage(
            data=items,
            has_more=bool(body.get("has_more")),
            next_after=next_after if isinstance(next_after, str) else None,
        )

    async def iter_all(self, *, page_size: int = 100) -> AsyncIterator[AsyncTask]:
        """Every task of this key, newest first, fetching pages as needed."""
        after: str | None = None
        while True:
            page = await self.list(limit=page_size, after=after)
            for task in page.data:
                yield task
            if not page.has_more or not page.next_after:
                return
            after = page.next_after

    async def cancel(self, task_id: str) -> AsyncTask:
        """Cancel a pending or processing task (refunded); ``ConflictError`` if it completed
        or failed.  Cancelling a cancelled task returns it, so a retried cancel is harmless."""
        try:
            return self._task(
                payload(await self._client.request("POST", f"/v1/tasks/{task_id}/cancel"))
            )
        except ConflictError:
            task = await self.get(task_id)
            if task.status == TaskStatus.CANCELLED:
                return task
            raise

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
        first_delay: float | None = None,
        on_progress: ProgressCallback | None = None,
        raise_on_failure: bool = True,
    ) -> AsyncTask:
        """Poll until the task finishes; returns it (``TaskFailedError`` if it did not complete).

        ``on_progress(task)`` (plain or async) is called after every look.  Past ``timeout``
        seconds it raises ``APITimeoutError`` whose ``task_id`` lets you look again later.
        """
        policy = self._client.wait_policy
        deadline = time.monotonic() + (policy.timeout if timeout is None else timeout)
        interval = policy.interval if poll_interval is None else poll_interval
        pause = policy.first_delay if first_delay is None else first_delay
        last: AsyncTask | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = f" (last seen {last.status}, {last.progress}%)" if last else ""
                raise APITimeoutError(
                    f"task {task_id} did not finish in time{state}", task_id=task_id
                )
            await asyncio.sleep(min(pause, remaining))
            pause = interval
            try:
                last = await self.get(task_id)
            except RateLimitError as exc:
                pause = max(interval, exc.retry_after or 0.0)
                continue
            except (APIConnectionError, APITimeoutError, InternalServerError):
                # A blip in a long wait is not the task's failure; a wrong URL or key is.
                if last is None:
                    raise
                continue
            if on_progress is not None:
                outcome = on_progress(last)
                if inspect.isawaitable(outcome):
                    await outcome
            if last.finished:
                return _finish(last, raise_on_failure)


def _finish(task: AsyncTask, raise_on_failure: bool) -> AsyncTask:
    if raise_on_failure and task.status == TaskStatus.CANCELLED:
        raise TaskCancelledError(task)
    if raise_on_failure and task.status == TaskStatus.FAILED:
        raise TaskFailedError(task)
    return task
