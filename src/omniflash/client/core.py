"""The client core: every call of the SDK written once, without I/O.

Each operation is a generator (a *flow*) that yields what it needs done and receives
the outcome (``omniflash.client.effects``): ``Send`` an HTTP request (gets the
``httpx.Response``), ``Sleep``, ``Fetch`` a result into a file, ``Report`` progress.
A transport failure comes back into the flow as the ``httpx.TransportError`` it was.
``Client`` and ``AsyncClient`` only carry these effects out, blocking or awaiting; the
retry, wait and download policies live here, and the tests can drive a flow by hand:

>>> core = ClientCore("http://127.0.0.1:8000", "of_x")
>>> flow = core.get_task("task_1")
>>> next(flow).url
'http://127.0.0.1:8000/v1/tasks/task_1'
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx

from omniflash.client.effects import Emit, Fetch, Fetched, Flow, Report, Send, Sleep
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
from omniflash.client.following import EventStreams, EventsUnavailable
from omniflash.client.generation import (
    GenerateAndWaitOptions,
    GenerateOptions,
    GenerationRequest,
)
from omniflash.client.images import upload_content
from omniflash.client.models import (
    Account,
    ProgressCallback,
    Task,
    TaskActions,
    TaskPage,
    TaskStatus,
    Upload,
    WaitOptions,
)
from omniflash.client.policies import RetryPolicy, WaitPolicy
from omniflash.client.protocol import (
    absolute,
    check,
    default_headers,
    new_idempotency_key,
    parse_page,
    parse_submit,
    parse_task,
    payload,
    result_url,
    same_origin,
    temp_path_for,
    transport_error,
)
from omniflash.client.task_events import END, TaskEvent

__all__ = [
    "ClientCore",
    "GenerateAndWaitOptions",
    "GenerateOptions",
    "RequestOptions",
    "WaitOptions",
]

T = TypeVar("T")
RetryMode = Literal["read", "submit"]


class RequestOptions(TypedDict, total=False):
    """The keyword arguments of ``client.request`` after the method and path."""

    json: Any
    """The JSON body."""
    params: dict[str, Any] | None
    """The query string."""
    files: dict[str, tuple[str, bytes, str]] | None
    """A multipart body: field name → (filename, content, content type)."""
    headers: dict[str, str] | None
    """Headers besides the key's Authorization and the SDK's User-Agent."""
    mode: RetryMode
    """``"read"`` (the default) retries on 429, 5xx and connection errors; ``"submit"``
    retries only a request that carries an Idempotency-Key, and its 409 "in flight"."""


class ClientCore:
    """The settings of one client and its calls as flows.

    ``actions`` (a ``Client``'s ``tasks``) is attached to the tasks it returns, for
    ``task.download(path)``; an ``AsyncClient`` leaves it ``None``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        retry: RetryPolicy | None = None,
        wait: WaitPolicy | None = None,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.retry = retry or RetryPolicy()
        self.wait_policy = wait or WaitPolicy()
        self.actions: TaskActions | None = None
        self.streams = EventStreams(base_url, api_key, self.retry)

    def request(
        self, method: str, path: str, **options: Unpack[RequestOptions]
    ) -> Flow[httpx.Response]:
        """One API call with the retry policy; raises the SDK's exceptions."""
        headers = options.get("headers") or {}
        mode = options.get("mode", "read")
        json, params, files = options.get("json"), options.get("params"), options.get("files")
        all_headers = default_headers(self.api_key) | headers
        retries = self.retry.retries_for(mode, all_headers)
        submit = mode == "submit"
        url = absolute(path, self.base_url)
        attempt = 0
        while True:
            try:
                response = yield Send(method, url, all_headers, json, params, files)
                check(response)
                return response  # type: ignore[no-any-return]
            except httpx.TransportError as exc:
                error: OmniflashClientError = transport_error(exc, f"{method} {url}")
                if attempt >= retries or not self.retry.retryable(error, submit=submit):
                    raise error from exc
            except APIStatusError as exc:
                if attempt >= retries or not self.retry.retryable(exc, submit=submit):
                    raise
                error = exc
            yield Sleep(self.retry.pause(error, attempt))
            attempt += 1

    def account(self) -> Flow[Account]:
        data = payload((yield from self.request("GET", "/v1/account")))
        return Account.from_data(data if isinstance(data, dict) else {})

    def upload(
        self, image: str | os.PathLike[str] | bytes, filename: str | None = None
    ) -> Flow[Upload]:
        """``POST /v1/uploads/images``: a local image (path or bytes) → its signed URL."""
        files = {"file": upload_content(image, filename)}
        # Retrying an upload is safe: at worst a second copy is stored, nothing is charged.
        response = yield from self.request("POST", "/v1/uploads/images", files=files)
        data = _body_json(response)
        return Upload.from_data(data if isinstance(data, dict) else {})

    def generate(self, prompt: str, **options: Unpack[GenerateOptions]) -> Flow[Task]:
        return self._submit(prompt, options)

    def generate_and_wait(
        self, prompt: str, **options: Unpack[GenerateAndWaitOptions]
    ) -> Flow[Task]:
        task = yield from self._submit(prompt, options)
        wait = self.wait(
            task.id, timeout=options.get("timeout"), on_progress=options.get("on_progress")
        )
        return (yield from wait)

    def _submit(self, prompt: str, options: GenerateOptions) -> Flow[Task]:
        body = GenerationRequest(
            prompt=prompt,
            duration=options.get("duration"),
            resolution=options.get("resolution"),
            aspect_ratio=options.get("aspect_ratio"),
            images=options.get("images") or (),
            video=options.get("video"),
            generation_type=options.get("generation_type"),
            seed=options.get("seed"),
            extra=options.get("extra_body"),
        ).to_body()
        key = options.get("idempotency_key") or new_idempotency_key()
        response = yield from self.request(
            "POST",
            "/v1/videos/generations",
            json=body,
            headers={"Idempotency-Key": key},
            mode="submit",
        )
        submitted = parse_submit(response)
        raw = {"task_id": submitted.id, "status": submitted.status, "replayed": submitted.replayed}
        return Task.from_data(raw, self.actions)

    def get_task(self, task_id: str) -> Flow[Task]:
        response = yield from self.request("GET", f"/v1/tasks/{quote(task_id, safe='')}")
        return parse_task(response, self.actions)

    def list_tasks(self, *, limit: int = 20, after: str | None = None) -> Flow[TaskPage[Task]]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        response = yield from self.request("GET", "/v1/tasks", params=params)
        return parse_page(response, self.actions)

    def cancel(self, task_id: str) -> Flow[Task]:
        path = f"/v1/tasks/{quote(task_id, safe='')}/cancel"
        try:
            response = yield from self.request("POST", path)
        except ConflictError as conflict:
            # A retried cancel whose first try went through finds the task cancelled.
            task = yield from self.get_task(task_id)
            if task.status == TaskStatus.CANCELLED:
                return task
            raise conflict
        return parse_task(response, self.actions)

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Flow[TaskEvent | None]:
        """A task's events, each handed out by an ``Emit``, until its ``end``."""
        return self.streams.follow(task_id, Emit, last_event_id=last_event_id)

    def wait(self, task_id: str, **options: Unpack[WaitOptions]) -> Flow[Task]:
        """Follow the task's events when the server has them, else poll; one deadline."""
        policy = self.wait_policy
        timeout = options.get("timeout")
        interval = options.get("poll_interval")
        interval = policy.interval if interval is None else interval
        pause = options.get("first_delay")
        pause = policy.first_delay if pause is None else pause
        on_progress = options.get("on_progress")
        deadline = time.monotonic() + (policy.timeout if timeout is None else timeout)
        last: Task | None = None
        if not self.streams.unsupported:
            last = yield from self._wait_by_events(task_id, deadline, on_progress)
            if last is not None and last.finished:
                return _finish(last, options.get("raise_on_failure", True))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                state = f" (last seen {last.status}, {last.progress}%)" if last else ""
                raise APITimeoutError(
                    f"task {task_id} did not finish in time{state}", task_id=task_id
                )
            yield Sleep(min(pause, remaining))
            pause = interval
            try:
                last = yield from self.get_task(task_id)
            except RateLimitError as exc:
                pause = max(interval, exc.retry_after or 0.0)
                continue
            except (APIConnectionError, APITimeoutError, InternalServerError):
                # A blip in a long wait is not the task's failure; a wrong URL or key is.
                if last is None:
                    raise
                continue
            if on_progress is not None:
                yield Report(on_progress, last)
            if last.finished:
                return _finish(last, options.get("raise_on_failure", True))

    def _wait_by_events(
        self, task_id: str, deadline: float, on_progress: ProgressCallback | None
    ) -> Flow[Task | None]:
        """The task as its events last showed it (finished at its end), or ``None`` when
        the server has no events; polling goes on from there until the deadline."""
        last: Task | None = None

        def seen(event: TaskEvent) -> Report | None:
            nonlocal last
            raw: dict[str, Any] = dict(last.raw) if last else {"id": task_id}
            raw["status"] = event.status or raw.get("status") or ""
            raw["progress"] = raw.get("progress", 0) if event.progress is None else event.progress
            end = event.data.get("task") if event.kind == END else None
            last = Task.from_data(end if isinstance(end, dict) else raw, self.actions)
            return None if on_progress is None else Report(on_progress, last)

        try:
            yield from self.streams.follow(task_id, seen, deadline=deadline)
        except NotFoundError:
            # An unknown task raises NotFoundError again here; a known one means a server
            # without events, and this look counts as the wait's first.
            last = yield from self.get_task(task_id)
            if on_progress is not None:
                yield Report(on_progress, last)
            self.streams.unsupported = True
        except EventsUnavailable:
            self.streams.unsupported = True
        except (APIConnectionError, APITimeoutError, InternalServerError, RateLimitError):
            pass  # the stream failed for now: polling takes over, the deadline stays
        return last

    def download(
        self, task: Task | str, path: str | os.PathLike[str], *, index: int = 0
    ) -> Flow[Path]:
        """Save a result video to ``path``: retried, written to a temp file then renamed.

        An expired link of a ``Task`` is renewed once by fetching the task again; nothing
        is ever submitted again.
        """
        target = Path(path)
        url = result_url(task, index)
        refreshed = False
        attempt = 0
        while True:
            try:
                yield from self._fetch_to(url, target)
                return target
            except (PermissionDeniedError, NotFoundError):
                if isinstance(task, str) or refreshed:
                    raise
                refreshed = True
                task = yield from self.get_task(task.id)
                url = result_url(task, index)
                continue
            except httpx.TransportError as exc:
                error: OmniflashClientError = transport_error(exc, "download")
                if attempt >= self.retry.max_retries:
                    raise error from exc
            except (RateLimitError, InternalServerError) as exc:
                if attempt >= self.retry.max_retries:
                    raise
                error = exc
            yield Sleep(self.retry.pause(error, attempt))
            attempt += 1

    def _fetch_to(self, url: str, target: Path) -> Flow[None]:
        url = absolute(url, self.base_url)
        # The key goes only to the API server itself, never to a CDN holding results.
        headers = default_headers(self.api_key) if same_origin(url, self.base_url) else None
        # A file is written beside the target and renamed over it, so a failed download
        # leaves no half file; a target that is not a file (``/dev/null``, a pipe) is
        # written in place: a rename would replace the device with a file.
        in_place = _not_a_file(target)
        tmp = target if in_place else temp_path_for(target)
        try:
            fetched: Fetched = yield Fetch(url, headers, tmp)
            if fetched.response.status_code >= 400:
                raise error_from_response(fetched.response)
            expected = fetched.response.headers.get("content-length")
            if expected is not None and expected.isdigit() and int(expected) != fetched.size:
                raise httpx.RemoteProtocolError(f"got {fetched.size} of {expected} bytes")
            if not in_place:
                os.replace(tmp, target)
        finally:
            if not in_place:
                tmp.unlink(missing_ok=True)


def _not_a_file(target: Path) -> bool:
    """Whether ``target`` exists as something other than a file or a folder."""
    try:
        mode = target.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _body_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _finish(task: Task, raise_on_failure: bool) -> Task:
    if raise_on_failure and task.status == TaskStatus.CANCELLED:
        raise TaskCancelledError(task)
    if raise_on_failure and task.status == TaskStatus.FAILED:
        raise TaskFailedError(task)
    return task
