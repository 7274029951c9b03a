"""What ``Client`` and ``AsyncClient`` share: retry and polling policies, headers, envelopes."""

from __future__ import annotations

import dataclasses
import os
import random
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from omniflash import __version__
from omniflash.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConflictError,
    IdempotencyError,
    InternalServerError,
    OmniflashClientError,
    RateLimitError,
    error_from_response,
)
from omniflash.client.models import SubmittedTask

__all__ = [
    "DEFAULT_SERVER",
    "RetryPolicy",
    "WaitPolicy",
    "check",
    "new_idempotency_key",
    "parse_submit",
    "payload",
    "temp_path_for",
    "transport_error",
]

DEFAULT_SERVER = "http://127.0.0.1:8000"
USER_AGENT = f"omniflash-python/{__version__}"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, and how long to wait before the next attempt.

    Reads (GET) and cancels retry on connection errors, timeouts, 429 and 5xx.  A submit
    is retried only when it carries an Idempotency-Key (the SDK always sends one), so a
    retried submit is charged once; it also retries the server's 409 "still in flight".

    >>> RetryPolicy(max_retries=5, backoff=0.25).delay(2, retry_after=None) <= 1.0
    True
    """

    max_retries: int = 3
    backoff: float = 0.5
    """The first wait in seconds; doubled each attempt, with jitter."""
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    """The longest Retry-After the SDK will sleep on its own; longer ones raise."""

    def retryable(self, error: OmniflashClientError, *, submit: bool) -> bool:
        if isinstance(error, APIConnectionError | APITimeoutError):
            return True
        if isinstance(error, RateLimitError):
            return error.retry_after is None or error.retry_after <= self.max_retry_after
        if isinstance(error, InternalServerError):
            return error.status_code != 501
        return (
            submit and isinstance(error, ConflictError) and not isinstance(error, IdempotencyError)
        )

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number ``attempt + 1`` (0-based); Retry-After wins."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return float(base * (0.5 + random.random() / 2))

    def pause(self, error: OmniflashClientError, attempt: int) -> float:
        """The delay before retrying after ``error``, honouring its Retry-After."""
        retry_after = error.retry_after if isinstance(error, APIStatusError) else None
        return self.delay(attempt, retry_after)

    def retries_for(self, mode: str, headers: Mapping[str, str]) -> int:
        """How many retries a call may make: none for a submit without an Idempotency-Key,
        since the server cannot tell a retry from a second order and would charge twice."""
        if mode == "submit" and not any(k.lower() == "idempotency-key" for k in headers):
            return 0
        return self.max_retries


@dataclasses.dataclass(frozen=True)
class WaitPolicy:
    """How ``wait()`` polls: a first look after ``first_delay``, then every ``interval``.

    The seed advises 5-10 s between looks for tasks that take minutes; the defaults are
    shorter because a preview or a small task finishes in seconds.
    """

    first_delay: float = 2.0
    interval: float = 3.0
    timeout: float = 900.0
    """The overall deadline of one ``wait()`` in seconds."""


def new_idempotency_key() -> str:
    return f"omniflash-sdk-{uuid.uuid4().hex}"


def default_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}


def same_origin(url: str, base_url: str) -> bool:
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def absolute(url: str, base_url: str) -> str:
    return urljoin(base_url.rstrip("/") + "/", url)


def resolve_settings(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """The server and key, from the arguments or ``OMNIFLASH_SERVER``/``OMNIFLASH_API_KEY``."""
    server = base_url or os.environ.get("OMNIFLASH_SERVER") or DEFAULT_SERVER
    key = api_key or os.environ.get("OMNIFLASH_API_KEY")
    if not key:
        raise OmniflashClientError("no API key: pass api_key= or set OMNIFLASH_API_KEY")
    return server.rstrip("/"), key


def check(response: httpx.Response) -> None:
    """Raise the SDK's exception for an error answer.

    Some gateways answer HTTP 200 with ``{"error": {...}}``; that is an error too.
    """
    if response.status_code >= 400:
        raise error_from_response(response)
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            body = response.json()
        except ValueError:
            return
        if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
            if "data" in body:
                return
            code = body["error"].get("code")
            status = code if isinstance(code, int) and code >= 400 else 500
            fake = httpx.Response(status, json=body, request=response.request)
            raise error_from_response(fake)


def payload(response: httpx.Response) -> Any:
    """The ``data`` of a success envelope ``{"code": 200, "data": ...}``."""
    try:
        body = response.json()
    except ValueError as exc:
        raise APIStatusError(
            f"the server answered {response.status_code} with a body that is not JSON",
            status_code=response.status_code,
        ) from exc
    return body.get("data") if isinstance(body, Mapping) else body


def envelope(response: httpx.Response) -> Mapping[str, Any]:
    body = response.json()
    return body if isinstance(body, Mapping) else {}


def parse_submit(response: httpx.Response) -> SubmittedTask:
    data = payload(response)
    item = data[0] if isinstance(data, list) and data else data
    if not isinstance(item, Mapping) or not (item.get("task_id") or item.get("id")):
        raise APIStatusError(
            "the submit answer carries no task_id", status_code=response.status_code, body=data
        )
    return SubmittedTask(
        id=str(item.get("task_id") or item.get("id")),
        status=str(item.get("status") or "submitted"),
        replayed=response.headers.get("idempotency-replayed", "").lower() == "true",
    )


def transport_error(exc: httpx.TransportError, what: str) -> OmniflashClientError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"{what} timed out ({type(exc).__name__})")
    return APIConnectionError(f"{what} failed: {exc or type(exc).__name__}")


def temp_path_for(target: Path) -> Path:
    """A hidden sibling of ``target``, so the final rename stays on one filesystem."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
