"""Bodies bounded while they stream, through a real ``omniflash serve`` process.

Every route that takes a body gets 80 MB sent chunked (no ``Content-Length`` to refuse
up front): it answers 413 in its dialect's shape, and while it streams the server's
peak RSS (``VmHWM``, reset first) and the largest file it holds open (spooled form
parts, ``.part`` uploads: read through ``/proc/PID/fd``) are measured.  A body at the
limit is accepted.  The money is unchanged by every refusal.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from omniflash.store import Store
from omniflash.store.schema import tasks
from tests.conftest import LiveServer, _truncate, running_server
from tests.remote.conftest import worker_token
from tests.store.test_races import assert_money as assert_task_money

MIB = 1024 * 1024
LIMIT = 20 * MIB
"""The server's JSON body, result and image limits (the image's is the default)."""
ENVELOPE = 64 * 1024
"""What a multipart body or an MCP message may add around its image."""
MCP_LIMIT = (LIMIT + 2) // 3 * 4 + ENVELOPE
"""MCP's body limit: upload_image's largest image in base64, and its envelope."""
SENT = 80 * MIB
SLACK = 12 * MIB
"""Peak RSS may grow by this much on a refused body beyond what the route buffers."""
BOUNDARY = "bodiesboundary"
PNG = b"\x89PNG\r\n\x1a\n"
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}


@dataclasses.dataclass
class Bodies:
    server: LiveServer
    store: Store
    token: str

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.server.api_key}"}

    def balances(self) -> dict[str, int]:
        return {key.id: key.balance for key in self.store.keys.all()}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def bodies(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bodies]:
    env = {"OMNIFLASH_MAX_BODY_BYTES": str(LIMIT), "OMNIFLASH_MAX_RESULT_BYTES": str(LIMIT)}
    tmp = tmp_path_factory.mktemp(f"bodies-{request.param}")
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        with contextlib.closing(Store(url)) as fresh:
            _truncate(fresh)
        env["OMNIFLASH_DATABASE_URL"] = url
    else:
        url = f"sqlite:///{(tmp / 'server-data' / 'omniflash.db').resolve()}"
    with running_server(tmp, "--workers", "0", **env) as server:
        store = Store(url)
        try:
            # The MCP SDK loads on the first call to /mcp (some 30 MiB): not the body's.
            hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            headers = {**MCP_ACCEPT, "Authorization": f"Bearer {server.api_key}"}
            assert httpx.post(server.url + "/mcp", json=hello, headers=headers).status_code == 200
            yield Bodies(server, store, worker_token(server, "bodies"))
        finally:
            store.close()


def assert_money(store: Store) -> None:
    """Each balance is its ledger's sum; each task charged once and refunded at most once."""
    for key in store.keys.all():
        assert key.balance == store.keys.ledger_sum(key.id), key
    with store.db.read() as conn:
        any_task = conn.execute(sa.select(tasks.c.id).limit(1)).first()
    if any_task is not None:
        assert_task_money(store)


class Watch:
    """The server's peak RSS growth and the largest regular file it held open, meanwhile."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.largest_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(field)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.largest_file = max(
                self.largest_file, max(open_files(self.pid).values(), default=0)
            )
            time.sleep(0.002)

    def __enter__(self) -> Watch:
        # "5" resets the peak (VmHWM) to the present RSS: the peak is then this body's.
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.before = self._status("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.growth = self._status("VmHWM") - self.before


def open_files(pid: int) -> dict[str, int]:
    """The regular files ``pid`` holds open (deleted temp files included), by target: size."""
    found = {}
    fds = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fds):
        with contextlib.suppress(OSError):
            info = os.stat(fds / fd)
            if stat.S_ISREG(info.st_mode):
                found[os.readlink(fds / fd)] = info.st_size
    return found


def leftovers(pid: int) -> list[str]:
    """Temporary files (spooled form parts, ``.part`` uploads) ``pid`` still holds open."""
    return [f for f in open_files(pid) if f.endswith((" (deleted)", ".part"))]


def chunked(head: bytes, size: int, tail: bytes = b"") -> Iterator[bytes]:
    """``head``, ``size`` filler bytes in 1 MiB chunks, ``tail``: sent chunked by httpx."""
    yield head
    block = b"a" * MIB
    for _ in range(size // MIB):
        yield block
    yield tail


def multipart(field: str, size: int) -> tuple[Iterator[bytes], dict[str, str]]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
        'filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    ).encode() + PNG
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return chunked(head, size, tail), {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def claimed(bodies: Bodies) -> tuple[str, int]:
    """A new task, claimed by the test's worker token: its id and lease epoch."""
    body = {"model": "Omni-Flash-Ext", "prompt": "bodies", "duration": 4}
    with bodies.server.client() as client:
        assert client.post("/v1/videos/generations", json=body).status_code == 200
    lease = httpx.post(
        bodies.server.url + "/worker/v1/claim",
        json={"owner": "t", "wait_s": 5},
        headers=bodies.auth(bodies.token),
        timeout=30,
    )
    assert lease.status_code == 200, lease.text
    got = lease.json()["lease"]
    return got["task_id"], got["epoch"]


def end(bodies: Bodies, task_id: str, epoch: int) -> None:
    """Fail the claimed task for good: refunded, so the money checks see it end."""
    answer = httpx.post(
        f"{bodies.server.url}/worker/v1/tasks/{task_id}/fail",
        json={"epoch": epoch, "message": "test over", "retry": False},
        headers=bodies.auth(bodies.token),
    )
    assert answer.status_code == 200, answer.text


# route name: (method, path, how the body is made, the route's limit, what it may buffer)
ROUTES = ["openai-multipart", "upload", "json-submit", "mcp", "worker-result"]


def _request(bodies: Bodies, route: str) -> tuple[str, str, Iterator[bytes], dict[str, str], int]:
    """method, path, an 80 MB chunked body, headers, and the bytes the route may hold in memory."""
    if route == "openai-multipart":
        content, headers = multipart("input_reference", SENT)
        return "POST", "/v1/videos", content, {**headers, **bodies.auth()}, 0
    if route == "upload":
        content, headers = multipart("file", SENT)
        return "POST", "/v1/uploads/images", content, {**headers, **bodies.auth()}, 0
    if route == "json-submit":
        content = chunked(b'{"model": "Omni-Flash-Ext", "prompt": "', SENT, b'"}')
        headers = {"Content-Type": "application/json", **bodies.auth()}
        return "POST", "/v1/videos/generations", content, headers, LIMIT  # parsed whole
    if route == "mcp":
        call = b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": '
        content = chunked(call + b'"upload_image", "arguments": {"image_base64": "', SENT, b'"}}}')
        headers = {"Content-Type": "application/json", **MCP_ACCEPT, **bodies.auth()}
        # The SDK reads the message into a growing bytearray: a copy may be made as it grows.
        return "POST", "/mcp", content, headers, 2 * MCP_LIMIT
    task_id, epoch = claimed(bodies)
    path = f"/worker/v1/tasks/{task_id}/result?epoch={epoch}"
    headers = {"Content-Type": "video/mp4", **bodies.auth(bodies.token)}
    return "PUT", path, chunked(b"", SENT), headers, 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("route", ROUTES)
def test_an_80_mb_chunked_body_is_refused_while_it_streams(bodies: Bodies, route: str) -> None:
    before = bodies.balances()
    method, path, content, headers, buffered = _request(bodies, route)
    with Watch(bodies.pid) as watch:
        answer = httpx.request(
            method, bodies.server.url + path, content=content, headers=headers, timeout=60
        )
    print(f"{route}: peak RSS +{watch.growth / MIB:.1f} MiB, largest file {watch.largest_file}")
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    if path == "/v1/videos":
        assert set(error) == {"message", "type", "param", "code"}  # OpenAI's shape
    else:
        assert set(error) == {"code", "message", "type"} and answer.json()["request_id"]
    assert error["type"] == "invalid_request_error" and "larger than" in error["message"]
    assert answer.headers["connection"] == "close"
    # Nothing past the limit reached a file or memory.
    assert watch.largest_file <= LIMIT + ENVELOPE, watch.largest_file
    assert watch.growth < buffered + SLACK, f"peak RSS grew {watch.growth / MIB:.1f} MiB"
    if route == "worker-result":
        task_id = path.split("/")[4]
        assert bodies.store.tasks.get(task_id).status.value == "processing"
        end(bodies, task_id, int(path.rsplit("=", 1)[1]))
    # No spooled part or half-written upload is left behind, open or on disk.
    deadline = time.monotonic() + 5
    while leftovers(bodies.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leftovers(bodies.pid)
    assert not list(bodies.server.data_dir.rglob("*.part"))
    with bodies.server.client() as client:  # and the server serves on
        assert client.get("/v1/tasks", params={"limit": 1}).status_code == 200
    if route != "worker-result":
        assert bodies.balances() == before
    assert_money(bodies.store)


def test_a_declared_content_length_past_the_limit_is_refused_unread(bodies: Bodies) -> None:
    head = (
        "POST /v1/videos/generations HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {bodies.server.api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {LIMIT + 1}\r\n\r\n{{}}"  # and only two bytes follow
    )
    with socket.create_connection(("127.0.0.1", bodies.server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):  # the server answers and closes, unread
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 413 Request Entity Too Large", answer
    assert b"connection: close" in rest.lower()
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["message"] == "The request body is larger than 20 MB"


@pytest.mark.timeout(120)
def test_bodies_at_the_limits_are_accepted(bodies: Bodies) -> None:
    url = bodies.server.url
    # A JSON submit of exactly LIMIT bytes: charged once, like any submit.
    body = json.dumps({"model": "Omni-Flash-Ext", "prompt": "exact", "duration": 4}).encode()
    exact = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    headers = {"Content-Type": "application/json", **bodies.auth()}
    answer = httpx.post(url + "/v1/videos/generations", content=exact, headers=headers)
    assert answer.status_code == 200, answer.text
    over = httpx.post(url + "/v1/videos/generations", content=exact + b" ", headers=headers)
    assert over.status_code == 413
    # An image of exactly the upload limit, uploaded, and through MCP's upload_image.
    image = PNG + b"\0" * (LIMIT - len(PNG))
    upload = httpx.post(
        url + "/v1/uploads/images",
        files={"file": ("exact.png", image, "image/png")},
        headers=bodies.auth(),
        timeout=60,
    )
    assert upload.status_code == 200 and upload.json()["bytes"] == LIMIT, upload.text
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "upload_image",
            "arguments": {"image_base64": base64.b64encode(image).decode(), "filename": "e.png"},
        },
    }
    mcp = httpx.post(url + "/mcp", json=call, headers={**MCP_ACCEPT, **bodies.auth()}, timeout=60)
    assert mcp.status_code == 200, mcp.text[:500]
    result: dict[str, Any] = mcp.json()["result"]
    assert not result.get("isError"), result
    assert result["structuredContent"]["bytes"] == LIMIT
    # A result file of exactly the result limit.
    task_id, epoch = claimed(bodies)
    put = httpx.put(
        f"{url}/worker/v1/tasks/{task_id}/result",
        params={"epoch": epoch},
        content=chunked(b"", LIMIT),
        headers=bodies.auth(bodies.token),
        timeout=60,
    )
    assert put.status_code == 200 and put.json() == {"held": True}, put.text
    end(bodies, task_id, epoch)
    assert_money(bodies.store)
