"""Local HTTP helpers for the client, CLI and playground tests.

- ``ScriptedServer`` answers each request with the next scripted ``Reply`` for its method
  and path, and records what it received: the retry cases a real server cannot produce
  on demand (5xx, a dropped connection, a 409 while a key is in flight).
- ``ImageHost`` serves a PNG to the live server's workers, at once or held back until
  released, so that a task stays ``processing`` for as long as a test needs.
- ``preview_server`` starts a real ``omniflash serve`` for a group of tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from tests.conftest import LiveServer, running_server


def preview_server(tmp_path: Path) -> contextlib.AbstractContextManager[LiveServer]:
    """``omniflash serve`` with 2 workers and the preview engine, stopped on exit."""
    return running_server(tmp_path, "--workers", "2")


def png_bytes(width: int = 96, height: int = 64) -> bytes:
    """A small gradient PNG: a real image for frame and reference modes."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)]
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _Background:
    """A ThreadingHTTPServer on a free loopback port, serving from a thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Any:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


# -- a scripted API -------------------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    """One scripted answer; ``drop`` closes the connection without answering."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    drop: bool = False

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        return json.dumps(self.body).encode(), "application/json"


@dataclasses.dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def error_body(status: int, message: str, type_: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "type": type_}}


def submitted_body(task_id: str) -> dict[str, Any]:
    return {"code": 200, "data": [{"status": "submitted", "task_id": task_id}]}


def task_body(task_id: str, status: str, progress: int = 0, **extra: Any) -> dict[str, Any]:
    return {"code": 200, "data": {"id": task_id, "status": status, "progress": progress, **extra}}


class _ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        owner: ScriptedServer = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = owner.next_reply(Received(self.command, path, headers, body))
        if reply.drop:
            self.close_connection = True
            return
        content, content_type = reply.encoded()
        self.send_response(reply.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = _handle


class ScriptedServer(_Background):
    """An API stand-in: ``on("POST", "/v1/...", Reply(503), Reply(200, ...))``.

    The last reply scripted for a route repeats; an unscripted route answers 404.
    """

    def __init__(self) -> None:
        super().__init__(_ScriptedHandler)
        self._lock = threading.Lock()
        self._script: dict[tuple[str, str], list[Reply]] = {}
        self.received: list[Received] = []

    def __enter__(self) -> ScriptedServer:
        super().__enter__()
        return self

    def on(self, method: str, path: str, *replies: Reply) -> None:
        with self._lock:
            self._script[(method, path)] = list(replies)

    def next_reply(self, request: Received) -> Reply:
        with self._lock:
            self.received.append(request)
            queue = self._script.get((request.method, request.path))
            if not queue:
                return Reply(404, error_body(404, "Not found", "not_found_error"))
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def calls(self, method: str, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if (r.method, r.path) == (method, path)]


# -- an image host ---------------------------------------------------------------------------------


class _ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner: ImageHost = self.server.owner  # type: ignore[attr-defined]
        if self.path.startswith("/held/"):
            owner.wait_released(self.path)
        content = owner.image
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class ImageHost(_Background):
    """Serves ``/image.png`` at once, and each ``held_url()`` only once it is released."""

    def __init__(self) -> None:
        super().__init__(_ImageHandler)
        self.image = png_bytes()
        self._held: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> ImageHost:
        super().__enter__()
        return self

    @property
    def image_url(self) -> str:
        return f"{self.url}/image.png"

    def held_url(self) -> str:
        """A new URL whose fetch hangs until ``release(url)``: its task stays processing."""
        with self._lock:
            path = f"/held/{len(self._held) + 1}.png"
            self._held[path] = threading.Event()
        return self.url + path

    def wait_released(self, path: str) -> None:
        with self._lock:
            event = self._held.get(path)
        if event is not None:
            event.wait(timeout=60)

    def release(self, url: str | None = None) -> None:
        """Let one held fetch (or all of them) finish."""
        with self._lock:
            events = list(self._held.items())
        for path, event in events:
            if url is None or url.endswith(path):
                event.set()

    def close(self) -> None:
        self.release()
        super().close()
