"""``Client``: the blocking SDK.

>>> with Client("http://127.0.0.1:8000", "of_...") as client:  # doctest: +SKIP
...     task = client.videos.generate_and_wait(prompt="a red kite over the sea", duration=4)
...     task.download("kite.mp4")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
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
    GenerationRequest,
    Task,
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

__all__ = ["Client"]

RetryMode = Literal["read", "submit"]
ProgressCallback = Callable[[Task], object]


class Client:
    """A connection to an Omni-Flash-Ext server.

    ``base_url`` and ``api_key`` default to ``OMNIFLASH_SERVER`` and ``OMNIFLASH_API_KEY``.
    Use it as a context manager, or call ``close()``.
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, self.api_key = resolve_settings(base_url, api_key)
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self.wait_policy = wait or WaitPolicy()
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)
        self.videos = Videos(self)
        self.tasks = Tasks(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def request(
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
                response = self._http.request(
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
            time.sleep(self.retry.pause(error, attempt))
            attempt += 1

    def account(self) -> Account:
        """The key's balance and limits (``GET /v1/account``, an omniflash extra)."""
        return Account.from_data(payload(self.request("GET", "/v1/account")) or {})

    def download(self, task: Task | str, path: str | os.PathLike[str], *, index: int = 0) -> Path:
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
                self._fetch_to(url, target)
                return target
            except (PermissionDeniedError, NotFoundError):
                if isinstance(task, str) or refreshed:
                    raise
                refreshed = True
                task = self.tasks.get(task.id)
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
            time.sleep(self.retry.pause(error, attempt))
            attempt += 1

    def _fetch_to(self, url: str, target: Path) -> None:
        url = absolute(url, self.base_url)
        # The key goes only to the API server itself, never to a CDN holding results.
        headers = default_headers(self.api_key) if same_origin(url, self.base_url) else None
        tmp = temp_path_for(target)
        try:
            with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                expected = response.headers.get("content-length")
                size = 0
                with open(tmp, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        size += len(chunk)
            if expected is not None and expected.isdigit() and int(expected) != size:
                raise httpx.RemoteProtocolError(f"got {size} of {expected} bytes")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _result_url(task: Task | str, index: int) -> str:
    if isinstance(task, str):
        return task
    urls = task.video_urls
    if not urls:
        raise OmniflashClientError(f"task {task.id} has no video (status {task.status})")
    return urls[index]


class Videos:
    """``client.videos``: submit generations."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def generate(
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
    ) -> Task:
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
        response = self._client.request(
            "POST",
            "/v1/videos/generations",
            json=body,
            headers={"Idempotency-Key": key},
            mode="submit",
        )
        submitted = parse_submit(response)
        raw = {"task_id": submitted.id, "status": submitted.status, "replayed": submitted.replayed}
        return Task(id=submitted.id, status=submitted.status, raw=raw, client=self._client)

    def generate_and_wait(
        self,
        prompt: str,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **params: Any,
    ) -> Task:
        """``generate`` then ``tasks.wait``: the completed task, or ``TaskFailedError``."""
        task = self.generate(prompt, **params)
        return self._client.tasks.wait(task.id, timeout=timeout, on_progress=on_progress)


class Tasks:
    """``client.tasks``: get, list, cancel and wait for tasks."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _task(self, data: Any) -> Task:
        return Task(**Task.fields_from(data if isinstance(data, dict) else {}), client=self._client)

    def get(self, task_id: str) -> Task:
        return self._task(payload(self._client.request("GET", f"/v1/tasks/{task_id}")))

    def list(self, *, limit: int = 20, after: str | None = None) -> TaskPage[Task]:
        """One page of this key's tasks, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        response = self._client.request("GET", "/v1/tasks", params=params)
        body = envelope(response)
        data = body.get("data")
        items = [self._task(item) for item in data] if isinstance(data, list) else []
        next_after = body.get("next_after")
        return TaskPage(
            data=items,
            has_more=bool(body.get("has_more")),
            next_after=next_after if isinstance(next_after, str) else None,
        )

    def iter_all(self, *, page_size: int = 100) -> Iterator[Task]:
        """Every task of this key, newest first, fetching pages as needed."""
        after: str | None = None
        while True:
            page = self.list(limit=page_size, after=after)
            yield from page.data
            if not page.has_more or not page.next_after:
                return
            after = page.next_after

    def cancel(self, task_id: str) -> Task:
        """Cancel a pending or processing task (refunded); ``ConflictError`` if it completed
        or failed.  Cancelling a cancelled task returns it, so a retried cancel is harmless."""
        try:
            return self._task(payload(self._client.request("POST", f"/v1/tasks/{task_id}/cancel")))
        except ConflictError:
            task = self.get(task_id)
            if task.status == TaskStatus.CANCELLED:
                return task
            raise

    def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        poll_interval: float | None = None,
        first_delay: float | None = None,
        on_progress: ProgressCallback | None = None,
        raise_on_failure: bool = True,
    ) -> Task:
        """Poll until the task finishes; returns it (``TaskFailedError`` if it did not complete).

        ``on_progress(task)`` is called after every look.  Past ``timeout`` seconds it raises
        ``APITimeoutError`` whose ``task_id`` lets you look again later.
        """
        policy = self._client.wait_policy
        deadline = time.monotonic() + (policy.timeout if timeout is None else timeout)
        interval = policy.interval if poll_interval is None else poll_interval
        pause = policy.first_delay if first_delay is None else first_delay
        last: Task | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = f" (last seen {last.status}, {last.progress}%)" if last else ""
                raise APITimeoutError(
                    f"task {task_id} did not finish in time{state}", task_id=task_id
                )
            time.sleep(min(pause, remaining))
            pause = interval
            try:
                last = self.get(task_id)
            except RateLimitError as exc:
                pause = max(interval, exc.retry_after or 0.0)
                continue
            except (APIConnectionError, APITimeoutError, InternalServerError):
                # A blip in a long wait is not the task's failure; a wrong URL or key is.
                if last is None:
                    raise
                continue
            if on_progress is not None:
                on_progress(last)
            if last.finished:
                return _finish(last, raise_on_failure)


def _finish(task: Task, raise_on_failure: bool) -> Task:
    if raise_on_failure and task.status == TaskStatus.CANCELLED:
        raise TaskCancelledError(task)
    if raise_on_failure and task.status == TaskStatus.FAILED:
        raise TaskFailedError(task)
    return task
