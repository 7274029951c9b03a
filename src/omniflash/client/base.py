"""What ``Client`` and ``AsyncClient`` share besides the core: how they are made, their
settings, and the cursor of the next page."""

from __future__ import annotations

from typing import Generic, TypedDict, TypeVar, Unpack

import httpx

from omniflash.client.core import ClientCore
from omniflash.client.models import Task, TaskPage
from omniflash.client.policies import RetryPolicy, WaitPolicy
from omniflash.client.protocol import resolve_settings

__all__ = ["BaseClient", "ClientOptions", "next_page"]

TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)


class ClientOptions(TypedDict, total=False):
    """The keyword arguments of ``Client`` and ``AsyncClient`` besides ``transport``."""

    timeout: float | httpx.Timeout
    """Seconds for each HTTP request (60 when left out)."""
    max_retries: int
    """Retries of a failed call, when ``retry`` is not given (3 when left out)."""
    retry: RetryPolicy | None
    wait: WaitPolicy | None
    """How ``tasks.wait()`` polls (``WaitPolicy()`` when left out)."""


class BaseClient(Generic[TransportT]):
    """What ``Client`` and ``AsyncClient`` share besides the core: how they are made, and
    their settings.  A shell opens its HTTP connection pool in ``_connect``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        transport: TransportT | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        server, key = resolve_settings(base_url, api_key)
        retry = options.get("retry") or RetryPolicy(max_retries=options.get("max_retries", 3))
        self._core = ClientCore(server, key, retry=retry, wait=options.get("wait"))
        self._connect(transport, options.get("timeout", 60.0))

    def _connect(self, transport: TransportT | None, timeout: float | httpx.Timeout) -> None:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return self._core.base_url

    @property
    def api_key(self) -> str:
        return self._core.api_key

    @property
    def retry(self) -> RetryPolicy:
        return self._core.retry

    @property
    def wait_policy(self) -> WaitPolicy:
        return self._core.wait_policy

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


def next_page(page: TaskPage[Task]) -> str | None:
    """The ``after`` cursor of the page after ``page``, or ``None`` when it was the last."""
    return page.next_after if page.has_more and page.next_after else None
