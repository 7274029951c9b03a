"""Fetching a task's input URLs without letting them reach private networks (SSRF).

Every hop resolves its host once, checks every address it resolved to, and
connects to one of those checked addresses: the socket is pinned, so a second,
different DNS answer (rebinding) is never consulted.  ``Host``, TLS SNI and
certificate checks still use the URL's host name.  Redirects are followed by
hand and re-checked; the body is streamed with a byte cap, and one deadline
bounds everything from DNS to the last byte::

    >>> policy = FetchPolicy(timeout_s=30, max_bytes=20 * 1024 * 1024)
    >>> fetch_bytes("http://10.0.0.1/a.png", label="image_urls[0]", policy=policy)
    Traceback (most recent call last):
    omniflash.errors.BadInput: image_urls[0]: address 10.0.0.1 is not public
"""

from __future__ import annotations

import binascii
import dataclasses
import http.client
import io
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urljoin, urlsplit

from omniflash.errors import BadInput

__all__ = [
    "USER_AGENT",
    "FetchPolicy",
    "InputUnavailable",
    "fetch_bytes",
    "fetch_to_file",
    "is_public_address",
]

USER_AGENT = "omniflash/0.1"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_DATA_IMAGE = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.ASCII | re.IGNORECASE)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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


# Belt and braces next to ``is_global``, whose tables have changed between Python releases.
_BLOCKED_V4 = tuple(ipaddress.IPv4Network(net) for net in [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
])  # fmt: skip
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments, Teredo 2001::/32 among them
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


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


def _v4_is_public(ip: ipaddress.IPv4Address) -> bool:
    return ip.is_global and not any(ip in net for net in _BLOCKED_V4)


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries: mapped, translated, compatible, NAT64, 6to4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE or ip in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: str | IPAddress) -> bool:
    """Whether a fetch may connect to ``ip``: a globally routable unicast address.

    IPv6 forms that carry an IPv4 address are judged by that address; Teredo is refused.

    >>> is_public_address("8.8.8.8"), is_public_address("::ffff:127.0.0.1")
    (True, False)
    """
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_is_public(ip)
    if ip.teredo is not None:
        return False
    embedded = _embedded_v4(ip)
    if embedded is not None:
        return _v4_is_public(embedded)
    return (
        ip in _GLOBAL_UNICAST_V6
        and ip.is_global
        and not ip.is_multicast
        and not any(ip in net for net in _BLOCKED_V6)
    )


def _size_text(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{round(n / (1024 * 1024), 1):g} MB"
    if n >= 1024:
        return f"{round(n / 1024, 1):g} KB"
    return f"{n} bytes"


class _Deadline:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left


class _DeadlineReader(io.RawIOBase):
    """A socket's read side where every ``recv`` waits at most until the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        # The socket's own file object counts references, so the connection may close
        # the socket while the response still reads, as http.client expects.
        self._raw = sock.makefile("rb", buffering=0)
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self._deadline.remaining())
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """The part of a socket that ``http.client`` uses, bounded by one overall deadline.

    A per-operation timeout alone would let a server drip one byte per interval forever.
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.remaining())
        self._sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        self._sock.close()


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an already checked address, whatever DNS says now."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sockaddrs: list[tuple[int, tuple[Any, ...]]],
        deadline: _Deadline,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(host, port, timeout=deadline.timeout_s)
        if tls is not None:
            self.default_port = 443
        self._sockaddrs = sockaddrs
        self._deadline = deadline
        self._tls = tls

    def connect(self) -> None:
        error: OSError | None = None
        for family, sockaddr in self._sockaddrs:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self._deadline.remaining())
                sock.connect(sockaddr)
                if self._tls is not None:
                    sock.settimeout(self._deadline.remaining())
                    sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            except OSError as exc:
                sock.close()
                if isinstance(exc, ssl.SSLError | TimeoutError):
                    raise
                error = exc
                continue
            self.sock = cast(socket.socket, _DeadlineSocket(sock, self._deadline))
            return
        raise error or OSError("no address to connect to")


def _resolve(host: str, port: int, deadline: _Deadline) -> list[tuple[int, tuple[Any, ...]]]:
    """``getaddrinfo`` bounded by the deadline (it has no timeout of its own)."""
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    thread = threading.Thread(target=lookup, name="omniflash-resolve", daemon=True)
    thread.start()
    thread.join(deadline.remaining())
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return [
        (info[0], info[4]) for info in box["infos"] if info[0] in (socket.AF_INET, socket.AF_INET6)
    ]


def _target(path: str, query: str) -> str:
    safe = "/%:@!$&'()*+,;=-._~"
    target = quote(path or "/", safe=safe)
    return f"{target}?{quote(query, safe=safe + '?')}" if query else target


def _request(
    url: str,
    label: str,
    policy: FetchPolicy,
    deadline: _Deadline,
) -> tuple[_PinnedConnection, http.client.HTTPResponse]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInput(f"{label}: invalid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadInput(f"{label}: only http and https URLs can be fetched, not {scheme!r}")
    if not parts.hostname:
        raise BadInput(f"{label}: the URL has no host")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise BadInput(f"{label}: invalid host name") from exc
    port = port or (443 if scheme == "https" else 80)

    try:
        sockaddrs = _resolve(host, port, deadline)
    except socket.gaierror as exc:
        if exc.errno in _TRANSIENT_DNS:
            raise InputUnavailable(f"{label}: could not resolve host {host} just now") from exc
        raise BadInput(f"{label}: could not resolve host {host}") from exc
    if not sockaddrs:
        raise BadInput(f"{label}: could not resolve host {host}")
    if not policy.allow_private:
        for _family, sockaddr in sockaddrs:
            if not is_public_address(sockaddr[0]):
                # Naming the address a host name resolved to would let callers map internal DNS.
                if _is_ip_literal(host):
                    raise BadInput(f"{label}: address {sockaddr[0]} is not public")
                raise BadInput(f"{label}: host {host} resolves to an address that is not public")

    tls = None
    if scheme == "https":
        tls = policy.ssl_context or ssl.create_default_context()
    conn = _PinnedConnection(host, port, sockaddrs=sockaddrs, deadline=deadline, tls=tls)
    try:
        conn.request(
            "GET",
            _target(parts.path, parts.query),
            headers={"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close"},
        )
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _stream(
    url: str,
    label: str,
    policy: FetchPolicy,
    write: Callable[[bytes], object],
    restart: Callable[[], object],
) -> None:
    """``_stream_once``, again after a transient failure while the one deadline allows a
    pause and another try; ``restart`` drops what a failed try wrote."""
    deadline = _Deadline(policy.timeout_s)
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
    deadline: _Deadline,
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
    if not _DATA_IMAGE.match(uri):
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
    if url[:5].lower() == "data:":
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
