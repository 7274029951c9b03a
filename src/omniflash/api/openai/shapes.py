"""The OpenAI videos dialect's wire shapes: the Video object, its errors, its route class.

A task is a Video: the same id, charge and lifecycle, seen through OpenAI's fields::

    pending → queued, processing → in_progress, completed → completed,
    failed → failed (error.code "task_failed"), cancelled → failed ("task_cancelled")
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from omniflash.api.responses import JSONResponse
from omniflash.contract import MODEL_NAME, VIDEO_SECONDS_RANGE
from omniflash.errors import InvalidParam, OmniflashError, for_status
from omniflash.store import TaskRow, TaskStatus

__all__ = ["OpenAIRoute", "is_openai_path", "openai_error", "poll_after_ms", "video_object"]

STATUSES = {
    TaskStatus.PENDING: "queued",
    TaskStatus.PROCESSING: "in_progress",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "failed",
}
_CODES = {
    401: "invalid_api_key",
    402: "insufficient_quota",
    403: "permission_denied",
    404: "not_found",
    409: "conflict",
    422: "idempotency_key_reused",
    429: "rate_limit_exceeded",
    500: "server_error",
}


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of this dialect's (``/v1/videos`` and below, but the seed's
    ``/v1/videos/generations``)."""
    return path == "/v1/videos" or (
        path.startswith("/v1/videos/") and not path.startswith("/v1/videos/generations")
    )


def video_object(task: TaskRow) -> dict[str, Any]:
    """The task as OpenAI's ``Video``."""
    spec = task.spec
    error = None
    if task.status is TaskStatus.FAILED:
        error = {"code": "task_failed", "message": task.error or "generation failed"}
    elif task.status is TaskStatus.CANCELLED:
        error = {"code": "task_cancelled", "message": task.error or "cancelled"}
    completed = task.status is TaskStatus.COMPLETED
    seconds = spec.duration if spec.duration is not None else VIDEO_SECONDS_RANGE[1]
    return {
        "id": task.id,
        "object": "video",
        "model": MODEL_NAME,
        "status": STATUSES[task.status],
        "progress": task.progress,
        "created_at": int(task.created_at),
        "completed_at": int(task.completed_at) if task.completed_at is not None else None,
        "expires_at": int(task.result_expires_at)
        if completed and task.result_expires_at is not None
        else None,
        "prompt": spec.prompt,
        "seconds": str(seconds),
        "size": f"{spec.width}x{spec.height}",
        "remixed_from_video_id": spec.remix_of,
        "error": error,
    }


def poll_after_ms(task: TaskRow, rpm: int) -> int:
    """``openai-poll-after-ms``: a tenth of the time left, from 250 ms to 5 s, but never so
    often that polling alone would spend more than half of ``rpm``, the key's reads a minute.

    >>> from types import SimpleNamespace
    >>> halfway = SimpleNamespace(estimated_time=20, progress=50)
    >>> poll_after_ms(halfway, rpm=1000), poll_after_ms(halfway, rpm=60)
    (1000, 2000)
    """
    floor = max(250.0, 120_000 / max(1, rpm))
    left_ms = task.estimated_time * (100 - task.progress) * 10
    return int(min(max(floor, left_ms / 10), max(5000.0, floor)))


def openai_error(exc: OmniflashError, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}`` with the error's HTTP status and
    headers (``Retry-After``), and any ``headers`` of the caller's own: this dialect's one
    rendering of ``omniflash.errors``' tree."""
    param = getattr(exc, "param", None)
    code = _CODES.get(exc.status)
    if exc.status == 400:
        code = "invalid_value" if param else None
    body = {"error": {"message": exc.message, "type": exc.type, "param": param, "code": code}}
    return JSONResponse(
        body, status_code=exc.status, headers={**exc.headers, **(headers or {})} or None
    )


def _validation_error(exc: RequestValidationError) -> OmniflashError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    message = f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid')}"
    return InvalidParam(message, loc[-1] if loc else None)


class OpenAIRoute(APIRoute):
    """Errors of these routes (auth and validation included) in OpenAI's envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except OmniflashError as exc:
                return openai_error(exc)
            except RequestValidationError as exc:
                return openai_error(_validation_error(exc))
            except StarletteHTTPException as exc:  # e.g. a malformed multipart body
                return openai_error(for_status(exc.status_code, str(exc.detail)))

        return openai_handler
