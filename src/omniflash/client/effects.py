"""What a flow of the client core asks its shell to do, and how a shell steps a flow.

A flow is a generator: it yields an effect and receives the outcome (``send``) or the
``httpx.TransportError`` that carrying it out raised (``throw``).  ``Client`` and
``AsyncClient`` differ only in how they carry the effects out.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, Any, Generic, TypeAlias, TypeVar

import httpx

from omniflash.client.models import ProgressCallback, Task
from omniflash.client.task_events import TaskEvent

__all__ = [
    "CHUNK_BYTES",
    "Close",
    "Effect",
    "Emit",
    "Fetch",
    "Fetched",
    "Flow",
    "Open",
    "Opened",
    "Read",
    "Report",
    "Run",
    "Send",
    "Sink",
    "Sleep",
]

T = TypeVar("T")
CHUNK_BYTES = 1 << 20
"""How much of a result a shell reads at a time while it streams it to a file."""


@dataclasses.dataclass(frozen=True)
class Send:
    """Send one request; the flow gets the ``httpx.Response`` back, whatever its status."""

    method: str
    url: str
    headers: dict[str, str] = dataclasses.field(repr=False)
    json: Any = dataclasses.field(default=None, repr=False)
    params: dict[str, Any] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = dataclasses.field(default=None, repr=False)
    """A multipart body: field name → (filename, content, content type)."""


@dataclasses.dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclasses.dataclass(frozen=True)
class Fetch:
    """GET ``url`` into the file ``target``; the flow gets the ``Fetched`` back.

    An error status is not written: its body is read into the response instead.
    """

    url: str
    headers: dict[str, str] | None
    target: Path

    @contextlib.contextmanager
    def open(self) -> Iterator[Sink]:
        with open(self.target, "wb") as out:
            yield Sink(out)


class Sink:
    """The file a ``Fetch`` writes, counting what it was given."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._out.write(chunk)
        self.size += len(chunk)


@dataclasses.dataclass(frozen=True)
class Fetched:
    response: httpx.Response
    size: int = 0


@dataclasses.dataclass(frozen=True)
class Report:
    """Call ``callback(task)`` (and await what it returns, with ``AsyncClient``)."""

    callback: ProgressCallback
    task: Task


@dataclasses.dataclass(frozen=True)
class Open:
    """GET ``url`` as a stream; the flow gets an ``Opened`` back.

    ``read_timeout`` bounds each wait for the next bytes.  An error status's body is read
    at once (the flow raises from it); the shell closes every stream a flow opened when
    the flow ends, however it ends.
    """

    url: str
    headers: dict[str, str] = dataclasses.field(repr=False)
    read_timeout: float

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The GET, with the client's timeouts but this stream's wait for bytes."""
        timeout = http.timeout
        return http.build_request(
            "GET",
            self.url,
            headers=self.headers,
            timeout=httpx.Timeout(
                connect=timeout.connect,
                read=self.read_timeout,
                write=timeout.write,
                pool=timeout.pool,
            ),
        )


@dataclasses.dataclass(frozen=True)
class Opened:
    response: httpx.Response
    """The status and headers; a success's body is not read yet."""
    handle: Any = dataclasses.field(default=None, repr=False, compare=False)
    """The shell's reader of the body."""


@dataclasses.dataclass(frozen=True)
class Read:
    """The next bytes of an opened stream (``b""`` at its end)."""

    stream: Opened


@dataclasses.dataclass(frozen=True)
class Close:
    stream: Opened


@dataclasses.dataclass(frozen=True)
class Emit:
    """Hand ``event`` to the caller iterating ``client.tasks.events(...)``."""

    event: TaskEvent


Effect: TypeAlias = Send | Sleep | Fetch | Report | Open | Read | Close | Emit
Flow: TypeAlias = Generator[Effect, Any, T]


class Run(Generic[T]):
    """Steps a flow for a shell: ``next()`` the effect to carry out, then ``send`` its
    outcome or ``throw`` its transport error, until ``next()`` is ``None``; then ``result``.

    Used as a context manager it closes the flow when the shell stops early (Ctrl-C, a
    disk error), so the flow's ``finally`` clauses run at once: a partial download's
    temporary file is removed.
    """

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._outcome: Any = None
        self._error: BaseException | None = None
        self._result: T | None = None

    def __enter__(self) -> Run[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self._flow.close()

    def next(self) -> Effect | None:
        error, self._error = self._error, None
        try:
            if error is not None:
                return self._flow.throw(error)
            return self._flow.send(self._outcome)
        except StopIteration as stop:
            self._result = stop.value
            return None

    def send(self, outcome: Any) -> None:
        self._outcome = outcome

    def throw(self, error: BaseException) -> None:
        self._error = error

    @property
    def result(self) -> T:
        return self._result  # type: ignore[return-value]  # set when next() returned None
