"""``Client``: the blocking SDK, a shell that carries out the core's flows with ``httpx.Client``.

>>> with Client("http://127.0.0.1:8000", "of_...") as client:  # doctest: +SKIP
...     task = client.videos.generate_and_wait(prompt="a red kite over the sea", duration=4)
...     client.tasks.download(task, "kite.mp4")
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, Unpack

import httpx

from omniflash.client import core, effects
from omniflash.client.models import Account, Task, TaskPage, Upload

__all__ = ["Client"]

T = TypeVar("T")


class Client(core.BaseClient[httpx.BaseTransport]):
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
            while (effect := run.next()) is not None:
                try:
                    run.send(self._carry_out(effect))
                except httpx.TransportError as exc:
                    run.throw(exc)
            return run.result

    def _carry_out(self, effect: effects.Effect) -> Any:
        match effect:
            case effects.Send(method, url, headers, json, params, files):
                request = self._http.build_request(
                    method, url, json=json, params=params, headers=headers, files=files
                )
                return self._http.send(request)
            case effects.Fetch():
                return self._fetch(effect)
            case effects.Report(callback, task):
                return callback(task)
            case _:
                time.sleep(effect.seconds)
                return None

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
            if (after := core.next_page(page)) is None:
                return

    def cancel(self, task_id: str) -> Task:
        """Cancel a pending or processing task (refunded); ``ConflictError`` if it completed
        or failed.  Cancelling a cancelled task returns it, so a retried cancel is harmless."""
        return self._run(self._core.cancel(task_id))

    def wait(self, task_id: str, **options: Unpack[core.WaitOptions]) -> Task:
        """Poll until the task finishes; returns it (``TaskFailedError`` if it did not complete).

        ``options``: ``timeout``, ``poll_interval``, ``first_delay``, ``on_progress``,
        ``raise_on_failure`` (``WaitOptions``).  ``on_progress(task)`` is called after every
        look.  Past ``timeout`` seconds it raises ``APITimeoutError`` whose ``task_id`` lets
        you look again later.
        """
        return self._run(self._core.wait(task_id, **options))

    def download(self, task: Task | str, path: str | os.PathLike[str], *, index: int = 0) -> Path:
        """Save a task's video (or a result URL) to ``path``, atomically; returns the path.

        Retried; an expired link of a ``Task`` is renewed once by looking at the task again.
        """
        return self._run(self._core.download(task, path, index=index))
