"""The answers of the Omni-Flash-Ext API as plain data: tasks, pages, the account.

Parsing is lenient: a field a server leaves out becomes ``None`` (or empty), so the SDK
works against any server speaking the seed API; omniflash's extras are optional.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypedDict, TypeVar, Unpack

__all__ = [
    "MODEL",
    "Account",
    "AsyncTask",
    "ProgressCallback",
    "SubmittedTask",
    "Task",
    "TaskError",
    "TaskInfo",
    "TaskPage",
    "TaskStatus",
    "Upload",
    "Video",
    "WaitOptions",
]

MODEL = "Omni-Flash-Ext"


class TaskStatus(enum.StrEnum):
    """A task's status.  ``Task.status`` is a plain ``str`` so unknown values survive."""

    SUBMITTED = "submitted"
    """The submit answer's status."""
    PENDING = "pending"
    """Queued, waiting for a worker."""
    PROCESSING = "processing"
    """A worker is generating it."""
    COMPLETED = "completed"
    """Done; ``video_urls`` holds the result."""
    FAILED = "failed"
    """Ended without a video; ``error.message`` says why.  Refunded."""
    CANCELLED = "cancelled"
    """Cancelled before it finished.  Refunded."""


FINISHED = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


ProgressCallback = Callable[["Task"], object]
"""Called with the task after every look; with ``AsyncClient`` it may be ``async``."""


class WaitOptions(TypedDict, total=False):
    """The keyword arguments of ``client.tasks.wait`` after the task id."""

    timeout: float | None
    """The overall deadline in seconds (``WaitPolicy.timeout`` when left out)."""
    poll_interval: float | None
    first_delay: float | None
    on_progress: ProgressCallback | None
    raise_on_failure: bool
    """``True`` (the default): a failed or cancelled task raises ``TaskFailedError``."""


@dataclasses.dataclass(frozen=True)
class SubmittedTask:
    """The submit answer: a task id, and whether an Idempotency-Key replayed an earlier one."""

    id: str
    status: str
    replayed: bool = False


@dataclasses.dataclass(frozen=True)
class TaskError:
    message: str
    code: str | None = None


@dataclasses.dataclass(frozen=True)
class Video:
    urls: tuple[str, ...]
    expires_at: int | None = None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class TaskActions(Protocol):
    """What ``Task.download()``, ``refresh()`` and ``wait()`` call: a ``Client``'s ``tasks``."""

    def get(self, task_id: str) -> Task: ...

    def wait(self, task_id: str, **options: Unpack[WaitOptions]) -> Task: ...

    def download(
        self, task: Task | str, path: str | os.PathLike[str], *, index: int = 0
    ) -> Path: ...


@dataclasses.dataclass(frozen=True)
class Task:
    """A task as ``GET /v1/tasks/{id}`` shows it: plain data, from ``Client`` and ``AsyncClient``.

    Its actions live on the client (``client.tasks.download(task, path)``); a task from a
    ``Client`` also offers them as ``task.download(path)``, ``task.refresh()`` and
    ``task.wait()``.
    """

    id: str
    status: str
    progress: int = 0
    created: int | None = None
    completed: int | None = None
    actual_time: int | None = None
    estimated_time: int | None = None
    cost: float | None = None
    credits_cost: float | None = None
    videos: tuple[Video, ...] = ()
    error: TaskError | None = None
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """The server's ``data`` object as received, extras included."""
    # Not a field: ``asdict``, ``replace`` and ``==`` see the data only.  ``from_data``
    # sets it on a task from a ``Client``, for ``download()``, ``refresh()`` and ``wait()``.
    _actions: ClassVar[TaskActions | None] = None

    @classmethod
    def fields_from(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor's arguments for a task ``data`` object, read leniently."""
        videos: list[Video] = []
        result = data.get("result")
        if isinstance(result, Mapping) and isinstance(result.get("videos"), list):
            for item in result["videos"]:
                if not isinstance(item, Mapping):
                    continue
                urls = item.get("url")
                if isinstance(urls, str):
                    urls = [urls]
                if isinstance(urls, list):
                    videos.append(
                        Video(
                            tuple(u for u in urls if isinstance(u, str)),
                            _int(item.get("expires_at")),
                        )
                    )
        error = None
        raw_error = data.get("error")
        if isinstance(raw_error, Mapping):
            code = raw_error.get("code")
            error = TaskError(
                str(raw_error.get("message") or ""), None if code is None else str(code)
            )
        return {
            "id": str(data.get("id") or data.get("task_id") or ""),
            "status": str(data.get("status") or ""),
            "progress": _int(data.get("progress")) or 0,
            "created": _int(data.get("created")),
            "completed": _int(data.get("completed")),
            "actual_time": _int(data.get("actual_time")),
            "estimated_time": _int(data.get("estimated_time")),
            "cost": _float(data.get("cost")),
            "credits_cost": _float(data.get("credits_cost")),
            "videos": tuple(videos),
            "error": error,
            "raw": dict(data),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any], actions: TaskActions | None = None) -> Task:
        task = cls(**cls.fields_from(data))
        if actions is not None:
            object.__setattr__(task, "_actions", actions)
        return task

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled: it will not change again."""
        return self.status in FINISHED

    @property
    def video_urls(self) -> list[str]:
        return [url for video in self.videos for url in video.urls]

    @property
    def video_url(self) -> str | None:
        urls = self.video_urls
        return urls[0] if urls else None

    @property
    def expires_at(self) -> int | None:
        """When the first result URL stops working (Unix seconds)."""
        return self.videos[0].expires_at if self.videos else None

    @property
    def replayed(self) -> bool:
        """True when a submit's Idempotency-Key named an earlier request: the same task,
        charged once."""
        return bool(self.raw.get("replayed"))

    @property
    def prompt(self) -> str | None:
        """The prompt, when the server echoes the request (omniflash does)."""
        request = self.raw.get("request")
        if isinstance(request, Mapping) and isinstance(request.get("prompt"), str):
            return str(request["prompt"])
        return None

    def _bound(self) -> TaskActions:
        actions = self._actions
        if actions is None:
            raise RuntimeError(
                f"task {self.id} is not from a Client: use client.tasks.download(task, path) "
                "(awaited, with an AsyncClient)"
            )
        return actions

    def download(self, path: str | os.PathLike[str], *, index: int = 0) -> Path:
        """``client.tasks.download(task, path)`` of the ``Client`` this task came from."""
        return self._bound().download(self, path, index=index)

    def refresh(self) -> Task:
        """The task as the server shows it now: ``client.tasks.get(task.id)``."""
        return self._bound().get(self.id)

    def wait(self, **options: Unpack[WaitOptions]) -> Task:
        """``client.tasks.wait(task.id, **options)``."""
        return self._bound().wait(self.id, **options)


TaskInfo = Task
"""The name of ``Task``'s data before it was one class; kept for existing imports."""
AsyncTask = Task
"""``AsyncClient`` returns plain ``Task`` objects; the name is kept for existing imports."""


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TaskPage(Generic[T]):
    """One page of ``GET /v1/tasks``, newest first; pass ``next_after`` as ``after``."""

    data: list[T]
    has_more: bool = False
    next_after: str | None = None

    def __iter__(self) -> Iterator[T]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@dataclasses.dataclass(frozen=True)
class Account:
    """``GET /v1/account`` (an omniflash extra): the key's name, balance and limits."""

    balance: float | None
    name: str | None = None
    prefix: str | None = None
    rpm: int | None = None
    max_concurrent: int | None = None
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Account:
        return cls(
            balance=_float(data.get("balance")),
            name=_text(data.get("name")),
            prefix=_text(data.get("prefix")),
            rpm=_int(data.get("rpm")),
            max_concurrent=_int(data.get("max_concurrent")),
            raw=dict(data),
        )


@dataclasses.dataclass(frozen=True)
class Upload:
    """``POST /v1/uploads/images``: an image's signed URL, for ``images=[upload.url]``."""

    url: str
    filename: str | None = None
    content_type: str | None = None
    bytes: int | None = None
    created_at: int | None = None
    expires_at: int | None = None
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Upload:
        return cls(
            url=str(data.get("url") or ""),
            filename=_text(data.get("filename")),
            content_type=_text(data.get("content_type")),
            bytes=_int(data.get("bytes")),
            created_at=_int(data.get("created_at")),
            expires_at=_int(data.get("expires_at")),
            raw=dict(data),
        )
