"""Outbound HTTP under the address rules: the one way omniflash reaches a URL it was given.

Both the input fetcher (``omniflash.media.fetch``) and the webhook sender
(``omniflash.webhooks.delivery``) go through here, so both follow one set of rules:

- the host is resolved once (``resolve``), within the deadline;
- every address it resolved to is checked (``refuse_private``): no private, loopback,
  link-local, multicast, documentation … address unless the operator allows them;
- the connection is pinned to those checked addresses (``PinnedConnection``): a second,
  different DNS answer (rebinding) is never consulted, while ``Host``, TLS SNI and the
  certificate check still use the URL's host name;
- one ``Deadline`` bounds DNS, connect, TLS, the request and the answer: a server that
  drips one byte per interval cannot hold a thread forever.

``open_pinned`` does all four for one request; what to send, whether to follow
redirects and what an answer means are the caller's.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
from typing import Any, cast
from urllib.parse import quote, urlsplit

__all__ = [
    "USER_AGENT",
    "Deadline",
    "Endpoint",
    "NoAddress",
    "NoHost",
    "PinnedConnection",
    "Refused",
    "SockAddrs",
    "WrongScheme",
    "is_public_address",
    "open_pinned",
    "refuse_private",
    "resolve",
]

USER_AGENT = "omniflash/0.1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SockAddrs = list[tuple[int, tuple[Any, ...]]]
"""``(family, sockaddr)`` pairs, as ``getaddrinfo`` gives them."""

# Belt and braces next to ``is_global``, whose tables have changed between Python releases.
_BLOCKED_V4 = tuple(ipaddress.IPv4Network(net) for net in [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
])  # fmt: skip
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
# IETF protocol assignments (Teredo 2001::/32 among them), documentation (2001:db8::/32,
# 3fff::/20) and segment routing's SIDs (5f00::/16).
_BLOCKED_V6 = tuple(ipaddress.IPv6Network(net) for net in [
    "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16",
])  # fmt: skip
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


class Refused(Exception):
    """The URL may never be reached: its message says why, without the caller's label."""


class WrongScheme(Refused):
    """Neither http nor https."""

    def __init__(self, scheme: str) -> None:
        super().__init__(f"scheme {scheme!r} is neither http nor https")
        self.scheme = scheme


class NoHost(Refused):
    """An http(s) URL without a host."""

    def __init__(self) -> None:
        super().__init__("the URL has no host")


class NoAddress(OSError):
    """The host resolved to no IPv4 or IPv6 address."""


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
    """Whether a request may connect to ``ip``: a globally routable unicast address.

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


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def refuse_private(host: str, sockaddrs: SockAddrs) -> None:
    """Raise ``Refused`` unless every address ``host`` resolved to is public."""
    for _family, sockaddr in sockaddrs:
        if not is_public_address(sockaddr[0]):
            # Naming the address a host name resolved to would let callers map internal DNS.
            if _is_ip_literal(host):
                raise Refused(f"address {sockaddr[0]} is not public")
            raise Refused(f"host {host} resolves to an address that is not public")


class Deadline:
    """One point in time that every step of a request must finish by."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    def remaining(self) -> float:
        """Seconds left; ``TimeoutError`` once there are none."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left


class _DeadlineReader(io.RawIOBase):
    """A socket's read side where every ``recv`` waits at most until the deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
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

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.remaining())
        self._sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        self._sock.close()


class PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an already checked address, whatever DNS says now."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sockaddrs: SockAddrs,
        deadline: Deadline,
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


def resolve(host: str, port: int, deadline: Deadline) -> SockAddrs:
    """``getaddrinfo`` bounded by the deadline (it has no timeout of its own).

    Only IPv4 and IPv6 answers are kept; ``socket.gaierror`` is raised as it comes.
    """
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


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where an http(s) URL points: its scheme, IDNA host, port and request target."""

    scheme: str
    host: str
    port: int
    target: str
    """The path and query, percent-encoded where they were not."""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Raises ``WrongScheme``, ``NoHost``, or ``Refused`` for an invalid URL or host."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise Refused("invalid URL") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise WrongScheme(scheme)
        if not parts.hostname:
            raise NoHost
        try:
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise Refused("invalid host name") from exc
        safe = "/%:@!$&'()*+,;=-._~"
        target = quote(parts.path or "/", safe=safe)
        if parts.query:
            target = f"{target}?{quote(parts.query, safe=safe + '?')}"
        return cls(scheme, host, port or (443 if scheme == "https" else 80), target)


def open_pinned(
    endpoint: Endpoint,
    deadline: Deadline,
    *,
    allow_private: bool,
    ssl_context: ssl.SSLContext | None = None,
) -> PinnedConnection:
    """A connection, not yet opened, pinned to ``endpoint``'s checked addresses.

    Raises ``Refused`` for an address that is not public (unless ``allow_private``),
    ``NoAddress`` when the host has none, ``socket.gaierror`` when it does not resolve
    and ``TimeoutError`` when the deadline passes first.  ``ssl_context`` replaces the
    system trust store for https (a private CA, tests).
    """
    sockaddrs = resolve(endpoint.host, endpoint.port, deadline)
    if not sockaddrs:
        raise NoAddress(f"could not resolve host {endpoint.host}")
    if not allow_private:
        refuse_private(endpoint.host, sockaddrs)
    tls = None
    if endpoint.scheme == "https":
        tls = ssl_context or ssl.create_default_context()
    return PinnedConnection(
        endpoint.host, endpoint.port, sockaddrs=sockaddrs, deadline=deadline, tls=tls
    )
