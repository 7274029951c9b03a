"""A deadline on each request head (``api/http_protocol.py``), through a real uvicorn server.

A connection that dawdles over its head is closed soon after the deadline; one that
keeps sending whole requests, or waits on a slow answer, is not.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from omniflash.api.http_protocol import protocol_class
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(30)

TIMEOUT_S = 0.5
REQUEST = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(3 * TIMEOUT_S)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        _app,
        port=port,
        log_level="warning",
        lifespan="off",
        http=protocol_class(TIMEOUT_S),
        timeout_keep_alive=60,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _answer(conn: socket.socket) -> bytes:
    got = b""
    while not got.endswith(b"ok"):
        chunk = conn.recv(4096)
        assert chunk, "closed before the answer"
        got += chunk
    return got


def _closed_after(conn: socket.socket) -> float:
    """Seconds until the server closes ``conn``."""
    started = time.monotonic()
    assert conn.recv(4096) == b""
    return time.monotonic() - started


def test_a_head_sent_too_slowly_is_cut_off(port: int) -> None:
    with _connect(port) as conn:
        started = time.monotonic()
        conn.sendall(b"GET / HTTP/1.1\r\nHost:")
        _closed_after(conn)
        # The deadline, and at most a tenth of it more for the sweep (with room for a
        # busy machine), but never before it.
        assert TIMEOUT_S * 0.9 <= time.monotonic() - started < TIMEOUT_S * 4


def test_a_connection_that_says_nothing_is_cut_off(port: int) -> None:
    with _connect(port) as conn:
        started = time.monotonic()
        _closed_after(conn)
        assert TIMEOUT_S * 0.9 <= time.monotonic() - started < TIMEOUT_S * 4


def test_each_answer_gives_the_next_head_a_new_deadline(port: int) -> None:
    with _connect(port) as conn:
        # Whole requests, each well within the deadline, for three deadlines' time.
        for _ in range(6):
            conn.sendall(REQUEST % b"")
            assert _answer(conn).startswith(b"HTTP/1.1 200")
            time.sleep(TIMEOUT_S / 2)
        started = time.monotonic()
        conn.sendall(b"GET / HTT")
        _closed_after(conn)
        assert time.monotonic() - started < TIMEOUT_S * 4


def test_a_slow_answer_is_not_cut_off(port: int) -> None:
    with _connect(port) as conn:
        conn.sendall(REQUEST % b"slow")
        assert _answer(conn).startswith(b"HTTP/1.1 200")
        conn.sendall(REQUEST % b"")  # the connection is still open for the next request
        assert _answer(conn).startswith(b"HTTP/1.1 200")
