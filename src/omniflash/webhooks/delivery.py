"""POSTing one webhook attempt, through ``omniflash.outbound`` like every input fetch.

The host is resolved once, every address checked (no private, loopback, link-local …
addresses unless allowed), and the connection pinned to a checked address; one deadline
bounds DNS, connect, TLS, the request and the answer.  Redirects are not followed: a 3xx
is a failed attempt.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
from collections.abc import Mapping

from omniflash.outbound import (
    USER_AGENT,
    Deadline,
    Endpoint,
    NoHost,
    Refused,
    WrongScheme,
    open_pinned,
)

__all__ = ["DeliveryRefused", "post_webhook"]

MAX_ANSWER_BYTES = 64 * 1024


class DeliveryRefused(Exception):
    """The URL may never be sent to (scheme, or an address that is not public): no retry."""


def post_webhook(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """POST ``body`` to ``url``; returns the HTTP status.

    Raises ``DeliveryRefused`` for a URL that must not be reached, and ``OSError``,
    ``TimeoutError``, ``http.client.HTTPException`` or ``ssl.SSLError`` for a failure that
    a later attempt may not meet.
    """
    try:
        endpoint = Endpoint.parse(url)
    except (WrongScheme, NoHost) as exc:
        raise DeliveryRefused("only absolute http and https URLs can receive webhooks") from exc
    except Refused as exc:
        raise DeliveryRefused(str(exc)) from exc
    try:
        conn = open_pinned(
            endpoint, Deadline(timeout_s), allow_private=allow_private, ssl_context=ssl_context
        )
    except Refused as exc:
        raise DeliveryRefused(str(exc)) from exc
    try:
        conn.request(
            "POST",
            endpoint.target,
            body=body,
            headers={
                "User-Agent": USER_AGENT,
                "Content-Type": "application/json",
                "Connection": "close",
                **headers,
            },
        )
        response = conn.getresponse()
        with contextlib.suppress(http.client.IncompleteRead):  # the status is what counts
            response.read(MAX_ANSWER_BYTES)
        return response.status
    finally:
        conn.close()
