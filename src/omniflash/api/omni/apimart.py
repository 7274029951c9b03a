"""APIMart's additions to the Omni-Flash-Ext answers: response versions, request ids, languages.

Pure helpers, no I/O; ``routes`` and ``errors`` call them.

- ``X-APIMart-Response-Version: 2026-07-27`` (or a later date) makes a submit answer
  ``data`` as one task object instead of the seed's one-item array::

      >>> response_version("2026-08-01"), response_version(None), response_version("2025-01-01")
      ('2026-07-27', None, None)

  and shows a cancelled task as ``status: "failed"`` with ``error.code:
  "task_cancelled"`` (``task_data``): the clients of that version stop at ``completed``
  or ``failed`` only, and would poll a ``cancelled`` task for ever;

- every body carries the request's id (``X-Request-Id``) as ``request_id``;
- ``?language=zh|en|ko|ja`` on ``GET /v1/tasks/{id}`` localises the prefix of a failed
  task's ``error.message`` (and, in ``errors``, the seed's standard error messages);
- whole credits are JSON integers: ``number(4.0) == 4`` is written ``4``, not ``4.0``.
"""

from __future__ import annotations

import datetime
import re
from typing import TYPE_CHECKING, Any

from omniflash.errors import InvalidRequest
from omniflash.logs import request_id_var
from omniflash.store import TaskRow, TaskStatus
from omniflash.task_view import number
from omniflash.text import shown

if TYPE_CHECKING:
    from omniflash.api.deps import Services

__all__ = [
    "LANGUAGES",
    "RESPONSE_VERSION_HEADER",
    "SUPPORTED_VERSIONS",
    "V2026_07_27",
    "failure_prefix",
    "number",
    "parse_language",
    "request_id",
    "response_version",
    "submitted_task",
    "task_data",
    "with_request_id",
]

RESPONSE_VERSION_HEADER = "X-APIMart-Response-Version"
V2026_07_27 = "2026-07-27"
SUPPORTED_VERSIONS = (V2026_07_27,)
"""Dated response versions, oldest first; no header (or an earlier date) is the seed's shape."""
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$", re.ASCII)
LANGUAGES = ("zh", "en", "ko", "ja")


def response_version(header: str | None) -> str | None:
    """The response version a header value selects; ``None`` for the seed's shape.

    A value that is not a ``YYYY-MM-DD`` date raises ``InvalidRequest`` naming the versions.
    """
    if header is None or not header.strip():
        return None
    value = header.strip()
    try:
        if not _DATE.match(value):
            raise ValueError(value)
        date = datetime.date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(
            f"{RESPONSE_VERSION_HEADER} {shown(value)} is not a date; supported versions: "
            + ", ".join(SUPPORTED_VERSIONS)
            + " (or no header for the original shape)"
        ) from exc
    chosen = None
    for version in SUPPORTED_VERSIONS:
        if date >= datetime.date.fromisoformat(version):
            chosen = version
    return chosen


def request_id() -> str | None:
    """This request's id, as ``RequestMiddleware`` set it (also the ``X-Request-Id`` header)."""
    return request_id_var.get()


def with_request_id(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with this request's ``request_id`` added, when there is a request."""
    rid = request_id()
    if rid is not None:
        body["request_id"] = rid
    return body


def submitted_task(task: TaskRow, *, credits_cost: float, cost: float) -> dict[str, Any]:
    """Version 2026-07-27's submit ``data``: the task as one object."""
    return {
        "id": task.id,
        "object": "generation.task",
        "status": task.status.value,
        "model": "Omni-Flash-Ext",
        "created": int(task.created_at),
        "estimated_time": task.estimated_time,
        "credits_cost": number(credits_cost),
        "cost": number(cost),
    }


def parse_language(value: str | None) -> str | None:
    """``?language=``'s value, checked; ``None`` when absent."""
    if value is None or value == "":
        return None
    lang = value.strip().lower()
    if lang not in LANGUAGES:
        raise InvalidRequest(
            f"`language` must be one of {', '.join(LANGUAGES)}, got {shown(value)}"
        )
    return lang


_FAILED = {
    "en": "Generation failed",
    "zh": "生成失败",
    "ko": "생성 실패",
    "ja": "生成に失敗しました",
}
_CANCELLED = {"en": "Cancelled", "zh": "已取消", "ko": "취소됨", "ja": "キャンセルされました"}


def task_data(
    services: Services,
    task: TaskRow,
    base_url: str,
    language: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """``GET /v1/tasks/{id}``'s ``data`` (``Services.task_view``), a failed or cancelled
    task's ``error.message`` prefixed in ``language``; the MCP tools answer the same.

    In response version 2026-07-27 a cancelled task reads ``status: "failed"`` (its
    ``error.code`` stays ``task_cancelled``): that version's clients end a poll only at
    ``completed`` or ``failed``.  Without the header it stays ``cancelled``.
    """
    public = services.task_view(task, base_url)
    error = public.get("error")
    cancelled = task.status is TaskStatus.CANCELLED
    if error is not None:
        error["message"] = failure_prefix(error["message"], cancelled=cancelled, language=language)
    if cancelled and version == V2026_07_27:
        public["status"] = TaskStatus.FAILED.value
        if error is None:
            public["error"] = {"code": "task_cancelled", "message": "Task cancelled"}
    return public


def failure_prefix(message: str, *, cancelled: bool, language: str | None) -> str:
    """A failed (or cancelled) task's ``error.message``, prefixed in ``language``."""
    if language is None:
        return message
    prefix = (_CANCELLED if cancelled else _FAILED)[language]
    separator = "：" if language in ("zh", "ja") else ": "
    return f"{prefix}{separator}{message}"
