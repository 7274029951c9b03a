"""Logging: text or JSON lines, request and task ids, and no signed URL's query string.

``configure_logging("info", "json")`` (the CLI's ``serve`` calls it) sends every record,
uvicorn's access log included, through one handler that

- writes ``{"time", "level", "logger", "message", "request_id", "task_id"}`` a line in
  ``json`` format, or the classic ``time LEVEL logger: message`` in ``text`` format;
- replaces the query string of any signed URL (``sig=``, ``X-Amz-Signature=`` …) with
  ``?[redacted]``, in every format, so a log never holds a working download link::

    >>> redact("GET /v1/files/results/t.mp4?expires=1&sig=ab12 HTTP/1.1")
    'GET /v1/files/results/t.mp4?[redacted] HTTP/1.1'
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterator

__all__ = [
    "JsonFormatter",
    "RedactFilter",
    "configure_logging",
    "new_request_id",
    "redact",
    "request_context",
    "request_id_var",
    "task_context",
    "task_id_var",
]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "omniflash_request_id", default=None
)
task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "omniflash_task_id", default=None
)

_SIGNED_QUERY = re.compile(
    r"\?[^\s\"'<>]*?(?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token"
    r"|googleaccessid|token)=[^\s\"'<>]*",
    re.IGNORECASE,
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def redact(text: str) -> str:
    """``text`` with the query strings of signed URLs replaced by ``?[redacted]``."""
    return _SIGNED_QUERY.sub("?[redacted]", text)


def new_request_id(incoming: str | None = None) -> str:
    """The caller's ``X-Request-Id`` when it is a sane token, else a new ``req_…`` id."""
    if incoming and _REQUEST_ID.match(incoming):
        return incoming
    return "req_" + secrets.token_hex(16)


@contextlib.contextmanager
def request_context(request_id: str) -> Iterator[None]:
    token = request_id_var.set(request_id)
    try:
        yield
    finally:
        request_id_var.reset(token)


@contextlib.contextmanager
def task_context(task_id: str | None) -> Iterator[None]:
    """Records logged inside carry ``task_id``."""
    token = task_id_var.set(task_id)
    try:
        yield
    finally:
        task_id_var.reset(token)


class RedactFilter(logging.Filter):
    """On a handler: redacts signed query strings and stamps the request and task ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        if getattr(record, "task_id", None) is None:
            record.task_id = task_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "task_id": getattr(record, "task_id", None),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    level: str = "info", fmt: str = "text", text_format: str = TEXT_FORMAT
) -> logging.Handler:
    """Route every logger (uvicorn's too) through one redacting handler on stderr.

    Pass ``log_config=None`` to ``uvicorn.run`` so that uvicorn keeps this setup.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(text_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler
