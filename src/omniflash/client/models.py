"""Typed requests and responses of the Omni-Flash-Ext API.

Parsing is lenient: a field a server leaves out becomes ``None`` (or empty), so the SDK
works against any server speaking the seed API; omniflash's extras are optional.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from omniflash.client.images import ImageInput, image_reference

if TYPE_CHECKING:
    from omniflash.client.async_client import AsyncClient
    from omniflash.client.sync_client import Client

__all__ = [
    "MODEL",
    "Account",
    "AsyncTask",
    "GenerationRequest",
    "SubmittedTask",
    "Task",
    "TaskError",
    "TaskInfo",
    "TaskPage",
    "TaskStatus",
    "Video",
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


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """The body of ``POST /v1/videos/generations``; ``None`` fields are left out.

    >>> GenerationRequest("a red kite", duration=4).to_body()
    {'model': 'Omni-Flash-Ext', 'prompt': 'a red kite', 'duration': 4}
    """

    prompt: str
    duration: int | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None
    images: Sequence[ImageInput] = ()
    """Image URLs, ``data:`` URIs, local paths or raw bytes (sent as data URIs)."""
    video: str | None = None
    generation_type: Literal["frame", "reference"] | str | None = None
    seed: int | None = None
    extra: Mapping[str, Any] | None = None
    """Extra body fields for servers that accept them."""

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": MODEL, "prompt": self.prompt}
        optional = {
            "duration": self.duration,
            "resolution": self.resolution,
            "aspect_ratio": self.aspect_ratio,
            "generation_type": self.generation_type,
            "seed": self.seed,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if self.images:
            body["image_urls"] = [image_reference(image) for image in self.images]
        if self.video is not None:
            body["video_urls"] = [self.video]
        if self.extra:
            body.update(self.extra)
        return body


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


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """A task as ``GET /v1/tasks/{id}`` shows it."""

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

    @classmethod
    def fields_from(cls, data: Mapping[str, Any]) -> dict[str, Any]:
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
    def from_data(cls, data: Mapping[str, Any]) -> TaskInfo:
        return cls(**cls.fields_from(data))

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


@dataclasses.dataclass(frozen=True)
class Task(TaskInfo):
    """A task from a ``Client``; ``download()`` saves its video."""

    client: Client | None = dataclasses.field(default=None, repr=False, compare=False)

    def _bound(self) -> Client:
        if self.client is None:
            raise RuntimeError("this Task is not bound to a Client")
        return self.client

    def download(self, path: str | Path, *, index: int = 0) -> Path:
        """Save the video to ``path`` (atomically) and return the path."""
        return self._bound().download(self, path, index=index)

    def refresh(self) -> Task:
        """The task as the server shows it now."""
        return self._bound().tasks.get(self.id)

    def wait(self, **kwargs: Any) -> Task:
        """``client.tasks.wait(task.id, **kwargs)``."""
        return self._bound().tasks.wait(self.id, **kwargs)


@dataclasses.dataclass(frozen=True)
class AsyncTask(TaskInfo):
    """A task from an ``AsyncClient``; ``await task.download(path)`` saves its video."""

    client: AsyncClient | None = dataclasses.field(default=None, repr=False, compare=False)

    def _bound(self) -> AsyncClient:
        if self.client is None:
            raise RuntimeError("this AsyncTask is not bound to an AsyncClient")
        return self.client

    async def download(self, path: str | Path, *, index: int = 0) -> Path:
        return await self._bound().download(self, path, index=index)

    async def refresh(self) -> AsyncTask:
        return await self._bound().tasks.get(self.id)

    async def wait(self, **kwargs: Any) -> AsyncTask:
        return await self._bound().tasks.wait(self.id, **kwargs)


T = TypeVar("T", bound=TaskInfo)


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
        name, prefix = data.get("name"), data.get("prefix")
        return cls(
            balance=_float(data.get("balance")),
            name=name if isinstance(name, str) else None,
            prefix=prefix if isinstance(prefix, str) else None,
            rpm=_int(data.get("rpm")),
            max_concurrent=_int(data.get("max_concurrent")),
            raw=dict(data),
        )
