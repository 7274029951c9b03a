"""POSTing one webhook under the input-fetching address rules.

The host is resolved once, every address checked (no private, loopback, link-local …
addresses unless allowed), and the connection pinned to a checked address, exactly as
``omniflash.media.fetch`` does for inputs.  Redirects are not followed: a 3xx is a failed
attempt.  One deadline bounds DNS, connect, TLS, the request and the answer.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

# The pinned connection and its helpers are the fetcher's own; webhooks share them so
# that both follow one set of address rules.
from omniflash.media.fetch import (
    USER_AGENT,
    _Deadline,
    _is_ip_literal,
    _PinnedConnection,
    _resolve,
    _target,
    is_public_address,
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
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DeliveryRefused("invalid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise DeliveryRefused("only absolute http and https URLs can receive webhooks")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise DeliveryRefused("invalid host name") from exc
    port = port or (443 if scheme == "https" else 80)
    deadline = _Deadline(timeout_s)
    sockaddrs = _resolve(host, port, deadline)
    if not sockaddrs:
        raise OSError(f"could not resolve host {host}")
    if not allow_private:
        for _family, sockaddr in sockaddrs:
            if not is_public_address(sockaddr[0]):
                if _is_ip_literal(host):
                    raise DeliveryRefused(f"address {sockaddr[0]} is not public")
                raise DeliveryRefused(f"host {host} resolves to an address that is not public")
    tls = (ssl_context or ssl.create_default_context()) if scheme == "https" else None
    conn = _PinnedConnection(host, port, sockaddrs=sockaddrs, deadline=deadline, tls=tls)
    try:
        conn.request(
            "POST",
            _target(parts.path, parts.query),
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
