"""How the SDK retries a failed call and how ``wait()`` polls: decisions, no I/O."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping

from omniflash.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ConflictError,
    InternalServerError,
    OmniflashClientError,
    RateLimitError,
)

__all__ = ["RetryPolicy", "WaitPolicy"]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, and how long to wait before the next attempt.

    Reads (GET) and cancels retry on connection errors, timeouts, 429 and 5xx.  A submit
    is retried only when it carries an Idempotency-Key (the SDK always sends one), so a
    retried submit is charged once; it also retries the server's 409 "still in flight".

    >>> RetryPolicy(max_retries=5, backoff=0.25).delay(2, retry_after=None) <= 1.0
    True
    """

    max_retries: int = 3
    backoff: float = 0.5
    """The first wait in seconds; doubled each attempt, with jitter."""
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    """The longest Retry-After the SDK will sleep on its own; longer ones raise."""

    def retryable(self, error: OmniflashClientError, *, submit: bool) -> bool:
        if isinstance(error, APIConnectionError | APITimeoutError):
            return True
        if isinstance(error, RateLimitError):
            return error.retry_after is None or error.retry_after <= self.max_retry_after
        if isinstance(error, InternalServerError):
            return error.status_code != 501
        return submit and isinstance(error, ConflictError)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry number ``attempt + 1`` (0-based); Retry-After wins."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return float(base * (0.5 + random.random() / 2))

    def pause(self, error: OmniflashClientError, attempt: int) -> float:
        """The delay before retrying after ``error``, honouring its Retry-After."""
        retry_after = error.retry_after if isinstance(error, APIStatusError) else None
        return self.delay(attempt, retry_after)

    def retries_for(self, mode: str, headers: Mapping[str, str]) -> int:
        """How many retries a call may make: none for a submit without an Idempotency-Key,
        since the server cannot tell a retry from a second order and would charge twice."""
        if mode == "submit" and not any(k.lower() == "idempotency-key" for k in headers):
            return 0
        return self.max_retries


@dataclasses.dataclass(frozen=True)
class WaitPolicy:
    """How ``wait()`` polls: a first look after ``first_delay``, then every ``interval``.

    The seed advises 5-10 s between looks for tasks that take minutes; the defaults are
    shorter because a preview or a small task finishes in seconds.
    """

    first_delay: float = 2.0
    interval: float = 3.0
    timeout: float = 900.0
    """The overall deadline of one ``wait()`` in seconds."""
