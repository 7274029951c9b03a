"""The exceptions omniflash raises.

API errors carry their HTTP status and the seed's error ``type``.  This tree covers every
error status the API answers; each dialect renders it in one function of its own room
(``api.omni.errors.seed_error``: ``{"error": {"code", "message", "type"}}``, localised;
``api.openai.shapes.openai_error``: OpenAI's ``{"error": {"message", "type", "param",
"code"}}``; ``api.mcp.server.tool_error``: an MCP tool error)::

    OmniflashError                       (500, api_error)
    ├── InvalidRequest                   (400, invalid_request_error)
    │   ├── InvalidParam                 (400, invalid_request_error) .param: the field at fault
    │   ├── InvalidDuration              (400, invalid_duration)
    │   ├── InvalidResolution            (400, invalid_resolution)
    │   ├── UnsupportedImageCount        (400, unsupported_image_count)
    │   ├── UnsupportedVideoCount        (400, unsupported_video_count)
    │   ├── MethodNotAllowed             (405, invalid_request_error)
    │   └── RangeNotSatisfiable          (416, invalid_request_error) .size: the blob's bytes
    ├── AuthenticationFailed             (401, authentication_error)
    ├── PaymentRequired                  (402, payment_required)
    ├── Forbidden                        (403, permission_error)
    ├── NotFound                         (404, not_found_error)
    ├── RequestTimeout                   (408, invalid_request_error) a body that stalled
    ├── Conflict                         (409, conflict_error)
    ├── PayloadTooLarge                  (413, invalid_request_error) a body past its limit
    │   └── UploadTooLarge               (413, invalid_request_error) an image past its limit
    ├── IdempotencyMismatch              (422, idempotency_error)
    ├── RateLimited                      (429, rate_limit_error) .retry_after
    └── ServiceUnavailable               (503, api_error) the database or blob storage unreachable

``headers`` are the HTTP headers an error's answer carries in any dialect
(``Retry-After``, ``Content-Range``).  ``for_status`` turns a status that came from
elsewhere (Starlette's routing, a form parser) into the class of the tree that has it.

Errors while a task runs are ``GenerationError``; their message ends up in the task's
``data.error.message`` and the task is refunded::

    GenerationError
    ├── BadInput          an input URL could not be fetched or decoded
    ├── EngineError       the engine could not generate (model, memory, shape)
    │   └── EngineBroken  … and cannot run another task: its process is restarted
    └── TaskCancelled     the task was cancelled while it ran

(The SDK has its own exceptions, ``omniflash.client.errors``; none shares a name with
these.)
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BadInput",
    "Conflict",
    "EngineBroken",
    "EngineError",
    "Forbidden",
    "GenerationError",
    "IdempotencyMismatch",
    "InvalidDuration",
    "InvalidParam",
    "InvalidRequest",
    "InvalidResolution",
    "MethodNotAllowed",
    "NotFound",
    "OmniflashError",
    "PayloadTooLarge",
    "PaymentRequired",
    "RangeNotSatisfiable",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "TaskCancelled",
    "UnsupportedImageCount",
    "UnsupportedVideoCount",
    "UploadTooLarge",
    "api_errors",
    "for_status",
]


class OmniflashError(Exception):
    status: int = 500
    type: str = "api_error"
    default_message: str = "Internal server error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP headers this error's answer carries, whatever the dialect."""
        return {}

    def to_dict(self) -> dict[str, object]:
        """The seed's error body: ``{"error": {"code", "message", "type"}}``."""
        return {"error": {"code": self.status, "message": self.message, "type": self.type}}


class InvalidRequest(OmniflashError):
    status = 400
    type = "invalid_request_error"
    default_message = "Invalid request parameters"


class InvalidParam(InvalidRequest):
    """An ``InvalidRequest`` that names the request field at fault (OpenAI's ``param``)."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


class InvalidDuration(InvalidRequest):
    type = "invalid_duration"


class InvalidResolution(InvalidRequest):
    type = "invalid_resolution"


class UnsupportedImageCount(InvalidRequest):
    type = "unsupported_image_count"


class UnsupportedVideoCount(InvalidRequest):
    type = "unsupported_video_count"


class MethodNotAllowed(InvalidRequest):
    status = 405
    default_message = "Method Not Allowed"


class RangeNotSatisfiable(InvalidRequest):
    status = 416
    default_message = "The requested range is outside the file"

    def __init__(self, message: str | None = None, *, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.size is None else {"Content-Range": f"bytes */{self.size}"}


class AuthenticationFailed(OmniflashError):
    status = 401
    type = "authentication_error"
    default_message = "Authentication failed. Please check your API key"


class PaymentRequired(OmniflashError):
    status = 402
    type = "payment_required"
    default_message = "Insufficient account balance. Please recharge and try again"


class Forbidden(OmniflashError):
    status = 403
    type = "permission_error"
    default_message = "This download link is invalid or has expired"


class NotFound(OmniflashError):
    status = 404
    type = "not_found_error"
    default_message = "Not found"


class Conflict(OmniflashError):
    status = 409
    type = "conflict_error"
    default_message = "The request conflicts with the current state"


class RequestTimeout(OmniflashError):
    status = 408
    type = "invalid_request_error"
    default_message = "The request body stopped arriving before it was complete"


class PayloadTooLarge(OmniflashError):
    status = 413
    type = "invalid_request_error"
    default_message = "The request body is too large"


class UploadTooLarge(PayloadTooLarge):
    default_message = "The file is too large"


class IdempotencyMismatch(OmniflashError):
    status = 422
    type = "idempotency_error"
    default_message = "This Idempotency-Key was already used with a different request body"


class RateLimited(OmniflashError):
    status = 429
    type = "rate_limit_error"
    default_message = "Too many requests. Please try again later"

    def __init__(self, message: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ServiceUnavailable(OmniflashError):
    status = 503
    type = "api_error"
    default_message = "A backing service (the file store) cannot be reached just now; try again"


def api_errors() -> list[type[OmniflashError]]:
    """Every class of the tree, ``OmniflashError`` first, parents before children."""
    found: list[type[OmniflashError]] = []
    todo: list[type[OmniflashError]] = [OmniflashError]
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def for_status(status: int, message: str) -> OmniflashError:
    """An error of ``status`` raised outside the tree (Starlette's routing, a form parser),
    as the most general class of the tree with that status."""
    for cls in api_errors():
        if cls.status == status:
            return cls(message)
    error = OmniflashError(message)  # a status no class has: still answered with it
    error.status = status
    error.type = "invalid_request_error" if status < 500 else "api_error"
    return error


class GenerationError(Exception):
    """A task could not be completed; ``str(exc)`` is shown to the task's owner."""

    retryable: bool = False


class BadInput(GenerationError):
    """An input (``image_urls[0]``, ``video_urls[0]``) could not be fetched or decoded."""


class EngineError(GenerationError):
    """The engine failed to generate the video."""


class EngineBroken(EngineError):
    """The engine failed and cannot run another task (say, a lost GPU context).

    The task fails like any other; then the worker starts a fresh engine process.
    """


class TaskCancelled(GenerationError):
    """The task was cancelled while it ran."""
