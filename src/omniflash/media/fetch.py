"""Fetching a task's input URLs without letting them reach private networks (SSRF).

Every hop goes out through ``omniflash.outbound``: its host resolved once, every
address checked, the socket pinned to a checked address (a second, different DNS
answer is never consulted).  Here: redirects are followed by hand and each hop
re-checked; the body is streamed with a byte cap; a transient failure is tried again
while the one deadline, which bounds everything from DNS to the last byte, allows;
``data:image/...;base64,`` URIs are decoded locally::

    >>> policy = FetchPolicy(timeout_s=30, max_bytes=20 * 1024 * 1024)
    >>> fetch_bytes("http://10.0.0.1/a.png", label="image_urls[0]", policy=policy)
    Traceback (most recent call last):
    omniflash.errors.BadInput: image_urls[0]: address 10.0.0.1 is not public
"""

from __future__ import annotations

import binascii
import dataclasses
import http.client
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

from omniflash.data_uris import DATA_IMAGE, is_data_uri
from omniflash.errors import BadInput
from omniflash.outbound import (
    USER_AGENT,
    Deadline,
    Endpoint,
    NoAddress,
    PinnedConnection,
    Refused,
    WrongScheme,
    open_pinned,
)

__all__ = ["FetchPolicy", "InputUnavailable", "fetch_bytes", "fetch_to_file"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024

_TRANSIENT_STATUS = frozenset({408, 425, 429})
"""Besides every 5xx: answers that say "not now" rather than "no"."""
_TRANSIENT_DNS = frozenset(
    getattr(socket, name) for name in ("EAI_AGAIN", "EAI_FAIL") if hasattr(socket, name)
)


class InputUnavailable(BadInput):
    """An input could not be fetched for a reason that may pass (HTTP 5xx or 429, a refused
    or reset connection, a timeout, a DNS server that did not answer): the attempt fails
    and the task is queued again while attempts remain."""

    retryable = True


@dataclasses.dataclass(frozen=True)
class FetchPolicy:
    """What one fetch may do.

    ``FetchPolicy(timeout_s=30, max_bytes=200 * 1024 * 1024)`` is a reference video's
    policy; ``ssl_context`` replaces the system trust store (a private CA, tests).
    """

    allow_private: bool = False
    timeout_s: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    ssl_context: ssl.SSLContext | None = None
    retry_delays: tuple[float, ...] = (0.5, 1.5)
    """Pauses before fetching again after a transient failure, within the same deadline."""


def _size_text(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{round(n / (1024 * 1024), 1):g} MB"
    if n >= 1024:
        return f"{round(n / 1024, 1):g} KB"
    return f"{n} bytes"


def _request(
    url: str,
    label: str,
    policy: FetchPolicy,
    deadline: Deadline,
) -> tuple[PinnedConnection, http.client.HTTPResponse]:
    try:
        endpoint = Endpoint.parse(url)
    except WrongScheme as exc:
        raise BadInput(
            f"{label}: only http and https URLs can be fetched, not {exc.scheme!r}"
        ) from exc
    except Refused as exc:
        raise BadInput(f"{label}: {exc}") from exc
    host = endpoint.host
    try:
        conn = open_pinned(
            endpoint, deadline, allow_private=policy.allow_private, ssl_context=policy.ssl_context
        )
    except socket.gaierror as exc:
        if exc.errno in _TRANSIENT_DNS:
            raise InputUnavailable(f"{label}: could not resolve host {host} just now") from exc
        raise BadInput(f"{label}: could not resolve host {host}") from exc
    except NoAddress as exc:
        raise BadInput(f"{label}: could not resolve host {host}") from exc
    except Refused as exc:
        raise BadInput(f"{label}: {exc}") from exc
    try:
        conn.request(
            "GET",
            endpoint.target,
            headers={"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"},
        )
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _stream(
    url: str,
    label: str,
    policy: FetchPolicy,
    write: Callable[[bytes], object],
    restart: Callable[[], object],
) -> None:
    """``_stream_once``, again after a transient failure while the one deadline allows a
    pause and another try; ``restart`` drops what a failed try wrote."""
    deadline = Deadline(policy.timeout_s)
    for delay in (*policy.retry_delays, None):
        try:
            _stream_once(url, label, policy, write, deadline)
            return
        except InputUnavailable:
            if delay is None or deadline.at - time.monotonic() < delay + 0.5:
                raise
            restart()
            time.sleep(delay)


def _stream_once(
    url: str,
    label: str,
    policy: FetchPolicy,
    write: Callable[[bytes], object],
    deadline: Deadline,
) -> None:
    limit = _size_text(policy.max_bytes)
    try:
        for _hop in range(policy.max_redirects + 1):
            conn, response = _request(url, label, policy, deadline)
            try:
                if response.status in _REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise BadInput(f"{label}: HTTP {response.status} without a Location")
                    url = urljoin(url, location.strip())
                    continue
                if response.status >= 500 or response.status in _TRANSIENT_STATUS:
                    raise InputUnavailable(f"{label}: HTTP {response.status}")
                if response.status != 200:
                    raise BadInput(f"{label}: HTTP {response.status}")
                declared = response.getheader("Content-Length")
                if declared and declared.strip().isdigit() and int(declared) > policy.max_bytes:
                    raise BadInput(f"{label}: larger than {limit}")
                total = 0
                while chunk := response.read1(_CHUNK):
                    total += len(chunk)
                    if total > policy.max_bytes:
                        raise BadInput(f"{label}: larger than {limit}")
                    write(chunk)
                if response.length:
                    # read1() reports an early close as the end, with bytes still owed.
                    raise http.client.IncompleteRead(b"", response.length)
                return
            finally:
                response.close()
                conn.close()
        raise BadInput(f"{label}: too many redirects (more than {policy.max_redirects})")
    except TimeoutError as exc:
        raise InputUnavailable(f"{label}: timed out after {policy.timeout_s:g} s") from exc
    except ssl.SSLCertVerificationError as exc:
        raise BadInput(f"{label}: TLS certificate check failed: {exc.verify_message}") from exc
    except ssl.SSLError as exc:
        raise BadInput(f"{label}: TLS error ({exc.reason or exc})") from exc
    except http.client.RemoteDisconnected as exc:
        raise InputUnavailable(
            f"{label}: the server closed the connection without answering"
        ) from exc
    except http.client.IncompleteRead as exc:
        raise InputUnavailable(
            f"{label}: the connection closed before the whole body arrived"
        ) from exc
    except (http.client.HTTPException, UnicodeError) as exc:
        raise BadInput(f"{label}: invalid HTTP response or URL ({type(exc).__name__})") from exc
    except ConnectionError as exc:  # refused, reset, aborted: the server may be back soon
        raise InputUnavailable(
            f"{label}: could not fetch ({exc.strerror or type(exc).__name__})"
        ) from exc
    except OSError as exc:
        raise BadInput(f"{label}: could not fetch ({exc.strerror or type(exc).__name__})") from exc


def _data_uri_bytes(uri: str, label: str, max_bytes: int) -> bytes:
    if not DATA_IMAGE.match(uri):
        raise BadInput(f"{label}: only data:image/...;base64, URIs are accepted")
    payload = uri.split(",", 1)[1]
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise BadInput(f"{label}: larger than {_size_text(max_bytes)}")
    try:
        data = binascii.a2b_base64(payload.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise BadInput(f"{label}: the data URI is not valid base64") from exc
    if len(data) > max_bytes:
        raise BadInput(f"{label}: larger than {_size_text(max_bytes)}")
    return data


def fetch_bytes(url: str, *, label: str, policy: FetchPolicy) -> bytes:
    """The body of ``url`` (http, https, or a ``data:image/...;base64,`` URI decoded locally)."""
    if is_data_uri(url):
        return _data_uri_bytes(url, label, policy.max_bytes)
    body = bytearray()
    _stream(url, label, policy, body.extend, body.clear)
    return bytes(body)


def fetch_to_file(url: str, dest: Path, *, label: str, policy: FetchPolicy) -> Path:
    """Stream the body of an http(s) ``url`` into ``dest``; nothing is left there on failure."""
    try:
        with dest.open("wb") as out:

            def restart() -> None:
                out.seek(0)
                out.truncate()

            _stream(url, label, policy, out.write, restart)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest
