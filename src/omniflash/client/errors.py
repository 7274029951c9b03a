"""The exceptions the SDK raises: one tree, rooted at ``OmniflashClientError``::

    OmniflashClientError
    ├── APIConnectionError           the server could not be reached (after retries)
    ├── APITimeoutError              a request, or ``wait()``, ran out of time  .task_id
    ├── InputError                   a local image is unreadable, or a type the server refuses
    ├── APIStatusError               the server answered with an error  .status_code .type .message
    │                                .retry_after (its Retry-After header, if any)
    │   ├── InvalidRequestError      400: .type is the seed's, e.g. "invalid_duration"
    │   ├── AuthenticationError      401
    │   ├── PaymentRequiredError     402
    │   ├── PermissionDeniedError    403: e.g. an expired download link
    │   ├── NotFoundError            404
    │   ├── ConflictError            409: e.g. cancelling a finished task
    │   ├── IdempotencyError         422: an Idempotency-Key reused with another body
    │   ├── RateLimitError           429  .retry_after
    │   └── InternalServerError      5xx
    └── TaskFailedError              the task ended "failed"  .task .task_id .message
        └── TaskCancelledError       the task ended "cancelled"

The server's words are kept: ``str(exc)`` is its ``error.message``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from omniflash.client.models import TaskInfo

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "ConflictError",
    "IdempotencyError",
    "InputError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "OmniflashClientError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "RateLimitError",
    "TaskCancelledError",
    "TaskFailedError",
    "error_from_response",
]


class OmniflashClientError(Exception):
    """Everything the SDK raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(OmniflashClientError):
    """The server could not be reached, or dropped the connection."""


class APITimeoutError(OmniflashClientError, TimeoutError):
    """A request, or a ``wait()``, ran past its deadline; ``task_id`` names the task if any."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class InputError(OmniflashClientError, ValueError):
    """An image given to ``generate`` could not be read, or is of a type the server refuses."""


class APIStatusError(OmniflashClientError):
    """The server answered with an HTTP error; ``type`` is the seed's error type."""

    default_type = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        body: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type or self.default_type
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after

    def __repr__(self) -> str:
        name = self.__class__.__name__
        return f"{name}({self.message!r}, status_code={self.status_code}, type={self.type!r})"


class InvalidRequestError(APIStatusError):
    default_type = "invalid_request_error"


class AuthenticationError(APIStatusError):
    default_type = "authentication_error"


class PaymentRequiredError(APIStatusError):
    default_type = "payment_required"


class PermissionDeniedError(APIStatusError):
    default_type = "permission_error"


class NotFoundError(APIStatusError):
    default_type = "not_found_error"


class ConflictError(APIStatusError):
    default_type = "conflict_error"


class IdempotencyError(APIStatusError):
    """422: the Idempotency-Key was used before with another body; retrying cannot help."""

    default_type = "idempotency_error"


class RateLimitError(APIStatusError):
    """429; ``retry_after`` is the server's Retry-After in seconds, when it sent one."""

    default_type = "rate_limit_error"


class InternalServerError(APIStatusError):
    default_type = "api_error"


class TaskFailedError(OmniflashClientError):
    """The task ended without a video; ``message`` is the task's ``error.message``."""

    def __init__(self, task: TaskInfo) -> None:
        message = task.error.message if task.error else f"task {task.status}"
        super().__init__(f"task {task.id} {task.status}: {message}")
        self.task = task
        self.task_id = task.id
        self.reason = message


class TaskCancelledError(TaskFailedError):
    """The task was cancelled before it finished."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    402: PaymentRequiredError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: IdempotencyError,
    429: RateLimitError,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (only the delta-seconds form; dates are rare)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> APIStatusError:
    """The exception for an error answer, keeping the server's message and type."""
    body: Any = None
    message = f"HTTP {response.status_code}"
    err_type: str | None = None
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            message = f"HTTP {response.status_code}: {text[:200]}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        if isinstance(error.get("message"), str) and error["message"]:
            message = error["message"]
        if isinstance(error.get("type"), str):
            err_type = error["type"]
    status = response.status_code
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    if status == 422 and err_type not in (None, "idempotency_error"):
        cls = InvalidRequestError
    kwargs: dict[str, Any] = {
        "status_code": status,
        "type": err_type,
        "body": body,
        "request_id": response.headers.get("x-request-id"),
        "retry_after": retry_after_seconds(response),
    }
    return cls(message, **kwargs)
