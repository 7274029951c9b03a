"""A webhook receiver on 127.0.0.1, and one live server the integration tests share."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, running_server

METRICS_TOKEN = "metrics-test-token"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int
    at: float


@dataclass
class Receiver:
    """Records every POST; answers with ``status_for(webhook_id, attempt_number)``."""

    url: str
    received: list[Received] = field(default_factory=list)
    status_for: Callable[[str, int], int] = lambda _id, _n: 204
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_task(self, task_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if task_id.encode() in r.body]

    def wait_for(self, task_id: str, count: int = 1, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.for_task(task_id)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{len(self.for_task(task_id))} webhooks for {task_id}, not {count}")


def start_receiver() -> tuple[Receiver, http.server.ThreadingHTTPServer]:
    receiver: Receiver

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            with receiver.lock:
                msg_id = headers.get("webhook-id", "")
                attempt = 1 + sum(r.headers.get("webhook-id") == msg_id for r in receiver.received)
                status = receiver.status_for(msg_id, attempt)
                receiver.received.append(Received(headers, body, status, time.time()))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook, server = start_receiver()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``omniflash serve`` with JSON logs, a metrics token and quick webhook retries."""
    with running_server(
        Path(tmp_path_factory.mktemp("integrations")),
        "--workers",
        "2",
        OMNIFLASH_LOG_FORMAT="json",
        OMNIFLASH_METRICS_TOKEN=METRICS_TOKEN,
        OMNIFLASH_WEBHOOK_RETRY_DELAYS="0.2",
    ) as live:
        yield live
