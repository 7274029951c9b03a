"""The API's wire format, without I/O: headers, URLs, envelopes, and errors from answers."""

from __future__ import annotations

import os
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
    OmniflashClientError,
    error_from_response,
)
from omniflash.client.models import SubmittedTask, Task, TaskActions, TaskPage

__all__ = [
    "DEFAULT_SERVER",
    "USER_AGENT",
    "absolute",
    "check",
    "default_headers",
    "new_idempotency_key",
    "parse_page",
    "parse_submit",
    "parse_task",
    "payload",
    "resolve_settings",
    "result_url",
    "same_origin",
    "temp_path_for",
    "transport_error",
]

DEFAULT_SERVER = "http://127.0.0.1:8000"
USER_AGENT = f"omniflash-python/{__version__}"


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


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise APIStatusError(
            f"the server answered {response.status_code} with a body that is not JSON",
            status_code=response.status_code,
        ) from exc


def payload(response: httpx.Response) -> Any:
    """The ``data`` of a success envelope ``{"code": 200, "data": ...}``."""
    body = _body(response)
    return body.get("data") if isinstance(body, Mapping) else body


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


def parse_task(response: httpx.Response, actions: TaskActions | None) -> Task:
    data = payload(response)
    return Task.from_data(data if isinstance(data, Mapping) else {}, actions)


def parse_page(response: httpx.Response, actions: TaskActions | None) -> TaskPage[Task]:
    """``GET /v1/tasks``: ``data`` is the page, ``has_more`` and ``next_after`` beside it."""
    body = _body(response)
    body = body if isinstance(body, Mapping) else {}
    data = body.get("data")
    items = data if isinstance(data, list) else []
    next_after = body.get("next_after")
    return TaskPage(
        data=[Task.from_data(i, actions) for i in items if isinstance(i, Mapping)],
        has_more=bool(body.get("has_more")),
        next_after=next_after if isinstance(next_after, str) else None,
    )


def result_url(task: Task | str, index: int) -> str:
    """The URL of a task's ``index``-th video (or ``task`` itself when it is a URL)."""
    if isinstance(task, str):
        return task
    urls = task.video_urls
    if not urls:
        raise OmniflashClientError(f"task {task.id} has no video (status {task.status})")
    return urls[index]


def transport_error(exc: httpx.TransportError, what: str) -> OmniflashClientError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"{what} timed out ({type(exc).__name__})")
    return APIConnectionError(f"{what} failed: {exc or type(exc).__name__}")


def temp_path_for(target: Path) -> Path:
    """A hidden sibling of ``target``, so the final rename stays on one filesystem."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
