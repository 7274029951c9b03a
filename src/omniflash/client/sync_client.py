"""``Client``: the blocking SDK, a shell that carries out the core's flows with ``httpx.Client``.

>>> with Client("http://127.0.0.1:8000", "of_...") as client:  # doctest: +SKIP
...     task = client.videos.generate_and_wait(prompt="a red kite over the sea", duration=4)
...     client.tasks.download(task, "kite.mp4")
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, Unpack

import httpx

from omniflash.client import base, core, effects
from omniflash.client.models import Account, Task, TaskPage, Upload
from omniflash.client.task_events import TaskEvent

__all__ = ["Client"]

T = TypeVar("T")


class Client(base.BaseClient[httpx.BaseTransport]):
    """A connection to an Omni-Flash-Ext server.

    ``base_url`` and ``api_key`` default to ``OMNIFLASH_SERVER`` and ``OMNIFLASH_API_KEY``;
    ``options`` are ``timeout``, ``max_retries``, ``retry`` and ``wait`` (``ClientOptions``).
    Use it as a context manager, or call ``close()``.
    """

    def _connect(
        self, transport: httpx.BaseTransport | None, timeout: float | httpx.Timeout
    ) -> None:
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=True)
        self.videos, self.tasks, self.uploads = Videos(self), Tasks(self), Uploads(self)
        self._core.actions = self.tasks

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, flow: effects.Flow[T]) -> T:
        """Carry out a flow of the core, blocking, and return its result."""
        with effects.Run(flow) as run:
            for _ in self._steps(run):
                pass
            return run.result

    def _steps(self, run: effects.Run[Any]) -> Iterator[TaskEvent]:
        """Carry out a flow's effects, handing out what it emits; the streams it opened
        are closed when it ends, or when the caller stops iterating."""
        with contextlib.ExitStack() as streams:
            while (effect := run.next()) is not None:
                if isinstance(effect, effects.Emit):
                    yield effect.event
                    run.send(None)
                    continue
                try:
                    run.send(self._carry_out(effect, streams))
                except httpx.TransportError as exc:
                    run.throw(exc)

    def _carry_out(self, effect: effects.Effect, streams: contextlib.ExitStack) -> Any:
        match effect:
            case effects.Open() as opening:
                response = self._http.send(opening.request(self._http), stream=True)
                streams.callback(response.close)
                if response.is_error:
                    response.read()
                return effects.Opened(response, response.iter_raw())
            case effects.Read(opened):
                return next(opened.handle, b"")
            case effects.Close(opened):
                with contextlib.suppress(httpx.HTTPError):
                    opened.response.close()
                return None
            case effects.Send(method, url, headers, json, params, files):
                request = self._http.build_request(
                    method, url, json=json, params=params, headers=headers, files=files
                )
                return self._http.send(request)
            case effects.Fetch():
                return self._fetch(effect)
            case effects.Report(callback, task):
                return callback(task)
            case effects.Sleep(seconds):
                time.sleep(seconds)
                return None
            case _:
                raise TypeError(f"not an effect to carry out here: {effect!r}")

    def _fetch(self, fetch: effects.Fetch) -> effects.Fetched:
        with self._http.stream("GET", fetch.url, headers=fetch.headers) as response:
            if response.is_error:
                response.read()
                return effects.Fetched(response)
            with fetch.open() as sink:
                for chunk in response.iter_bytes(effects.CHUNK_BYTES):
                    sink.write(chunk)
        return effects.Fetched(response, sink.size)

    def request(
        self, method: str, path: str, **options: Unpack[core.RequestOptions]
    ) -> httpx.Response:
        """One API call with the retry policy; raises the SDK's exceptions.

        ``options``: ``json``, ``params``, ``headers`` and ``mode`` (``RequestOptions``);
        ``mode="submit"`` retries only a call that carries an Idempotency-Key.
        """
        return self._run(self._core.request(method, path, **options))

    def account(self) -> Account:
        """The key's balance and limits (``GET /v1/account``, an omniflash extra)."""
        return self._run(self._core.account())

    def download(self, task: Task | str, path: str | os.PathLike[str], *, index: int = 0) -> Path:
        """``client.tasks.download(task, path)``."""
        return self.tasks.download(task, path, index=index)


class Videos:
    """``client.videos``: submit generations."""

    def __init__(self, client: Client) -> None:
        self._run = client._run
        self._core = client._core

    def generate(self, prompt: str, **options: Unpack[core.GenerateOptions]) -> Task:
        """Submit a task; returns it with status ``submitted`` (see ``tasks.wait``).

        ``options``: ``duration``, ``resolution``, ``aspect_ratio``, ``images``, ``video``,
        ``generation_type``, ``seed``, ``idempotency_key``, ``extra_body``
        (``GenerateOptions``).  A random Idempotency-Key is sent unless one is given, so a
        retried submit is charged once; reuse your own key to make a submit safe across
        restarts.
        """
        return self._run(self._core.generate(prompt, **options))

    def generate_and_wait(
        self, prompt: str, **options: Unpack[core.GenerateAndWaitOptions]
    ) -> Task:
        """``generate`` then ``tasks.wait``: the completed task, or ``TaskFailedError``.

        Takes ``generate``'s options, and ``wait``'s ``timeout`` and ``on_progress``.
        """
        return self._run(self._core.generate_and_wait(prompt, **options))


class Uploads:
    """``client.uploads``: local images to signed URLs, for ``images=[...]``."""

    def __init__(self, client: Client) -> None:
        self._run = client._run
        self._core = client._core

    def create(
        self, image: str | os.PathLike[str] | bytes, *, filename: str | None = None
    ) -> Upload:
        """Upload a JPEG, PNG, GIF or WebP (a path or bytes); returns its signed URL (72 h)."""
        return self._run(self._core.upload(image, filename))


class Tasks:
    """``client.tasks``: get, list, cancel, wait for and download tasks."""

    def __init__(self, client: Client) -> None:
        self._run = client._run
        self._core = client._core
        self._steps = client._steps

    def get(self, task_id: str) -> Task:
        """The task as the server shows it now."""
        return self._run(self._core.get_task(task_id))

    def list(self, *, limit: int = 20, after: str | None = None) -> TaskPage[Task]:
        """One page of this key's tasks, newest first; pass ``next_after`` as ``after``."""
        return self._run(self._core.list_tasks(limit=limit, after=after))

    def iter_all(self, *, page_size: int = 100) -> Iterator[Task]:
        """Every task of this key, newest first, fetching pages as needed."""
        after: str | None = None
        while True:
            page = self.list(limit=page_size, after=after)
            yield from page.data
            if (after := base.next_page(page)) is None:
                return

    def cancel(self, task_id: str) -> Task:
        """Cancel a pending or processing task (refunded); ``ConflictError`` if it completed
        or failed.  Cancelling a cancelled task returns it, so a retried cancel is harmless."""
        return self._run(self._core.cancel(task_id))

    def events(self, task_id: str, *, last_event_id: str | None = None) -> Iterator[TaskEvent]:
        """The task's events as they happen (``status``, ``progress``, ``preview``), ending
        with its ``end`` event, whose ``.task`` is the finished task.

        A dropped connection is opened again with ``Last-Event-ID``: no event is missed or
        repeated.  Pass an event's ``id`` as ``last_event_id`` to resume later.  A 404 is
        ``NotFoundError`` (no such task, or a server without events); a 405 is
        ``EventsUnavailable``.
        """
        with effects.Run(self._core.events(task_id, last_event_id=last_event_id)) as run:
            yield from self._steps(run)

    def wait(self, task_id: str, **options: Unpack[core.WaitOptions]) -> Task:
        """Wait until the task finishes; returns it (``TaskFailedError`` if it did not complete).

        It follows the task's events when the server has them, and polls when it has not
        (learnt once per client).  ``options``: ``timeout``, ``poll_interval``,
        ``first_delay``, ``on_progress``, ``raise_on_failure`` (``WaitOptions``).
        ``on_progress(task)`` is called after every event or look.  Past ``timeout``
        seconds it raises ``APITimeoutError`` whose ``task_id`` lets you look again later.
        """
        return self._run(self._core.wait(task_id, **options))

    def download(self, task: Task | str, path: str | os.PathLike[str], *, index: int = 0) -> Path:
        """Save a task's video (or a result URL) to ``path``, atomically; returns the path.

        Retried; an expired link of a ``Task`` is renewed once by looking at the task again.
        """
        return self._run(self._core.download(task, path, index=index))
