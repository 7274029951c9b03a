"""Transient fetch failures are retried; permanent ones fail at once.  A real local server
answers 503 (or hangs up, or 429) a given number of times, then the file."""

from __future__ import annotations

import http.server
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from omniflash.errors import BadInput
from omniflash.media.fetch import FetchPolicy, InputUnavailable, fetch_bytes, fetch_to_file

pytestmark = pytest.mark.timeout(60)

BODY = b"\x89PNG\r\n\x1a\n" + b"p" * 5000
POLICY = FetchPolicy(allow_private=True, timeout_s=10, max_bytes=1024 * 1024)


class Flaky:
    """``/<status>/<n>/…`` fails ``n`` times with ``status`` (0: a cut body), then 200."""

    def __init__(self, body: bytes = BODY) -> None:
        self.seen: Counter[str] = Counter()
        flaky = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                flaky.seen[self.path] += 1
                _, status, times, *_ = self.path.split("/")
                if flaky.seen[self.path] > int(times):
                    self._send(200, body)
                elif status == "0":  # promises the body, sends half, hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:100])
                    self.close_connection = True
                else:
                    self._send(int(status), b"not now")

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    server = Flaky()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


@pytest.mark.parametrize("status", [503, 500, 502, 429])
def test_a_transient_answer_is_fetched_again(flaky: Flaky, status: int) -> None:
    path = f"/{status}/1/a.png"
    assert fetch_bytes(flaky.base + path, label="image_urls[0]", policy=POLICY) == BODY
    assert flaky.seen[path] == 2


def test_a_cut_body_is_fetched_again_from_the_start(flaky: Flaky, tmp_path: Path) -> None:
    dest = tmp_path / "video.mp4"
    fetch_to_file(flaky.base + "/0/2/v.mp4", dest, label="video_urls[0]", policy=POLICY)
    assert dest.read_bytes() == BODY, "nothing of the cut tries is left in the file"
    assert flaky.seen["/0/2/v.mp4"] == 3


def test_a_server_that_stays_down_is_retryable(flaky: Flaky) -> None:
    with pytest.raises(InputUnavailable, match=r"^image_urls\[0\]: HTTP 503$") as caught:
        fetch_bytes(flaky.base + "/503/99/a.png", label="image_urls[0]", policy=POLICY)
    assert caught.value.retryable
    assert flaky.seen["/503/99/a.png"] == 1 + len(POLICY.retry_delays)


@pytest.mark.parametrize("status", [404, 403, 410])
def test_a_refusal_is_not_retried(flaky: Flaky, status: int) -> None:
    path = f"/{status}/99/a.png"
    with pytest.raises(BadInput, match=rf"HTTP {status}$") as caught:
        fetch_bytes(flaky.base + path, label="image_urls[0]", policy=POLICY)
    assert not caught.value.retryable
    assert flaky.seen[path] == 1


def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputUnavailable) as caught:
        fetch_bytes(f"http://127.0.0.1:{port}/", label="image_urls[0]", policy=POLICY)
    assert caught.value.retryable


def test_ssrf_and_size_refusals_are_not_retryable(flaky: Flaky) -> None:
    with pytest.raises(BadInput, match="not public") as caught:
        fetch_bytes("http://127.0.0.1:9/a.png", label="image_urls[0]", policy=FetchPolicy())
    assert not caught.value.retryable
    small = FetchPolicy(allow_private=True, timeout_s=10, max_bytes=100)
    with pytest.raises(BadInput, match="larger than") as caught:
        fetch_bytes(flaky.base + "/200/0/a.png", label="image_urls[0]", policy=small)
    assert not caught.value.retryable
