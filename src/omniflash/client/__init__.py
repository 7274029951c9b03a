"""The omniflash Python SDK: ``Client`` and ``AsyncClient`` for any Omni-Flash-Ext server.

>>> from omniflash.client import Client
>>> with Client("http://127.0.0.1:8000", "of_...") as client:  # doctest: +SKIP
...     task = client.videos.generate_and_wait(prompt="a red kite", duration=4)
...     task.download("kite.mp4")

The exceptions form one tree under ``OmniflashClientError`` (see ``omniflash.client.errors``).
"""

from omniflash.client.async_client import AsyncClient
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
from omniflash.client.models import (
    Account,
    AsyncTask,
    GenerationRequest,
    Task,
    TaskError,
    TaskInfo,
    TaskPage,
    TaskStatus,
    Video,
)
from omniflash.client.protocol import RetryPolicy, WaitPolicy
from omniflash.client.sync_client import Client

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Account",
    "AsyncClient",
    "AsyncTask",
    "AuthenticationError",
    "Client",
    "ConflictError",
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
    "RetryPolicy",
    "Task",
    "TaskCancelledError",
    "TaskError",
    "TaskFailedError",
    "TaskInfo",
    "TaskPage",
    "TaskStatus",
    "Video",
    "WaitPolicy",
]
