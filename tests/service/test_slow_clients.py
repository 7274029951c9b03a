"""Slow clients are cut off: a real ``omniflash serve`` against hundreds of real sockets.

Clients that dribble their request head, or stop sending a body they declared, each
hold a file descriptor of the server's.  With 2 s timeouts the server closes every
one of them within the timeout and some slack, answering 408 to the stalled bodies,
while a normal client is served throughout.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, running_server

TIMEOUT_S = 2.0
SLACK_S = 3.0
SLOW_HEADS = 300
SLOW_BODIES = 100


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with running_server(
        tmp_path,
        "--workers",
        "0",
        OMNIFLASH_HEADER_TIMEOUT=str(TIMEOUT_S),
        OMNIFLASH_BODY_TIMEOUT=str(TIMEOUT_S),
    ) as server:
        yield server


def sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            count += os.readlink(fds / fd).startswith("socket:")
    return count


def connect(server: LiveServer, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(first)
    sock.setblocking(False)
    return sock


def until_closed(socks: list[socket.socket], deadline: float) -> dict[socket.socket, bytes]:
    """Read every socket until the server closes it (or ``deadline``); what each received."""
    received = {s: b"" for s in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    open_ = set(socks)
    while open_ and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if data:
                received[sock] += data
            else:
                selector.unregister(sock)
                open_.discard(sock)
    selector.close()
    assert not open_, f"{len(open_)} of {len(socks)} slow connections still open"
    return received


@pytest.mark.timeout(90)
def test_slow_heads_and_stalled_bodies_are_closed_while_others_are_served(
    server: LiveServer,
) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    baseline = sockets_of(pid)
    auth = f"Authorization: Bearer {server.api_key}\r\n"
    started = time.monotonic()
    heads = [connect(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") for _ in range(SLOW_HEADS)]
    json_start = b'{"prompt"'
    part_start = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    routes = [
        ("/v1/videos/generations", "application/json", json_start),
        ("/v1/videos", "application/json", json_start),  # OpenAI's error shape
        ("/v1/uploads/images", "multipart/form-data; boundary=x", part_start),
        ("/mcp", "application/json", json_start),
    ]
    bodies = []
    for n in range(SLOW_BODIES):
        path, content_type, start = routes[n % len(routes)]
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: {content_type}\r\n"
            "Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n\r\n"
        )
        bodies.append(connect(server, head.encode() + start))
    try:
        # The server accepts them all (it holds a socket for each) before any times out.
        held = sockets_of(pid)
        expected = baseline + SLOW_HEADS + SLOW_BODIES - 5  # the start-up check's may go
        while held < expected and time.monotonic() < started + 1:
            time.sleep(0.02)
            held = sockets_of(pid)
        assert held >= expected, (baseline, held)
        # A normal client is served meanwhile, promptly.
        waits: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            with httpx.Client(base_url=server.url, timeout=5) as client:
                while not stop.is_set():
                    t0 = time.monotonic()
                    assert client.get("/healthz").status_code == 200
                    waits.append(time.monotonic() - t0)
                    time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        # A dribbled header line does not buy a slow head more time.
        time.sleep(TIMEOUT_S / 2)
        for sock in heads:
            sock.send(b"X-Slow: 1\r\n")
        try:
            received = until_closed(heads + bodies, started + TIMEOUT_S + SLACK_S)
        finally:
            stop.set()
            poller.join()
        closed_after = time.monotonic() - started
    finally:
        for sock in heads + bodies:
            sock.close()
    assert all(not received[s] for s in heads)  # closed without an answer
    for sock in bodies:
        assert received[sock].startswith(b"HTTP/1.1 408 "), received[sock][:200]
        assert b"no part of the request body arrived" in received[sock].lower()
    assert waits and max(waits) < 1.0, max(waits)
    deadline = time.monotonic() + 5
    while sockets_of(pid) > baseline + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(
        f"{SLOW_HEADS} slow heads and {SLOW_BODIES} stalled bodies closed within "
        f"{closed_after:.2f} s; server sockets {baseline} -> {held} -> {sockets_of(pid)}; "
        f"{len(waits)} polls meanwhile, slowest {max(waits) * 1000:.0f} ms"
    )
    assert sockets_of(pid) <= baseline + 5


@pytest.mark.timeout(60)
def test_a_kept_alive_connection_gets_the_same_deadline_for_its_next_head(
    server: LiveServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.rstrip().endswith(b"}"):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        # The next request's head comes a line at a time, each well inside uvicorn's
        # keep-alive timer, which any byte resets: only the head deadline ends it.
        started = time.monotonic()
        closed = None
        for line in (b"GET /healthz HTTP/1.1\r\n", *[b"X-Slow: 1\r\n"] * 20):
            try:
                sock.sendall(line)
                sock.settimeout(0.5)
                if sock.recv(65536) == b"":
                    closed = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                closed = time.monotonic() - started
                break
    assert closed is not None and TIMEOUT_S - 0.2 <= closed <= TIMEOUT_S + SLACK_S, closed
