"""The omniflash Python SDK: ``Client`` and ``AsyncClient`` for any Omni-Flash-Ext server.

>>> from omniflash.client import Client
>>> with Client("http://127.0.0.1:8000", "of_...") as client:  # doctest: +SKIP
...     task = client.videos.generate_and_wait(prompt="a red kite", duration=4)
...     client.tasks.download(task, "kite.mp4")

Both are thin shells over one core (``omniflash.client.core``) that plans every call
without I/O.  A ``Task`` is plain data.  The exceptions form one tree under
``OmniflashClientError`` (see ``omniflash.client.errors``).
"""

from omniflash.client.async_client import AsyncClient
from omniflash.client.base import ClientOptions
from omniflash.client.core import RequestOptions
from omniflash.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    ConflictError,
    IdempotencyError,
    InputError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    OmniflashClientError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    TaskCancelledError,
    TaskFailedError,
)
from omniflash.client.following import EventsUnavailable
from omniflash.client.generation import (
    GenerateAndWaitOptions,
    GenerateOptions,
    GenerationRequest,
)
from omniflash.client.models import (
    Account,
    AsyncTask,
    Task,
    TaskError,
    TaskInfo,
    TaskPage,
    TaskStatus,
    Upload,
    Video,
    WaitOptions,
)
from omniflash.client.policies import RetryPolicy, WaitPolicy
from omniflash.client.sync_client import Client
from omniflash.client.task_events import TaskEvent

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Account",
    "AsyncClient",
    "AsyncTask",
    "AuthenticationError",
    "Client",
    "ClientOptions",
    "ConflictError",
    "EventsUnavailable",
    "GenerateAndWaitOptions",
    "GenerateOptions",
    "GenerationRequest",
    "IdempotencyError",
    "InputError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "OmniflashClientError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestOptions",
    "RetryPolicy",
    "Task",
    "TaskCancelledError",
    "TaskError",
    "TaskEvent",
    "TaskFailedError",
    "TaskInfo",
    "TaskPage",
    "TaskStatus",
    "Upload",
    "Video",
    "WaitOptions",
    "WaitPolicy",
]
