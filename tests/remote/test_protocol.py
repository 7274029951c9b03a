"""Worker and server agree on a protocol version; a lease is never left leased to nobody."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from omniflash.api.app import create_app
from omniflash.api.workers.routes import _claim_once
from omniflash.settings import Settings
from omniflash.store import Store, TaskStatus
from omniflash.worker.http_source import ProtocolError
from omniflash.worker.source import PROTOCOL_VERSION
from tests.conftest import omniflash_cmd
from tests.remote.conftest import Api
from tests.remote.test_source import LEASE, _scripted


def _config(protocol: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "worker": "gpu",
        "version": "0.0.1",
        "lease_s": 3,
        "task_timeout_s": 60,
        "max_claim_wait_s": 60,
    }
    if protocol is not None:
        config["protocol"] = protocol
    return config


@pytest.fixture
def old_server() -> Iterator[tuple[str, list[str], dict[str, Any]]]:
    """A server that answers ``/worker/v1/config`` with ``answer`` and records each path."""
    seen: list[str] = []
    answer: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            seen.append(f"{self.command} {self.path}")
            body = json.dumps(answer if self.path == "/worker/v1/config" else {}).encode()
            self.send_response(200 if self.path == "/worker/v1/config" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _reply

        def log_message(self, *_args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen, answer
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("protocol", "said"), [(1, "protocol is 1"), (None, "older than 2")])
def test_a_worker_of_another_protocol_exits_with_a_clear_error(
    old_server: tuple[str, list[str], dict[str, Any]], protocol: int | None, said: str
) -> None:
    url, seen, answer = old_server
    answer.update(_config(protocol))
    env = {**os.environ, "OMNIFLASH_WORKER_TOKEN": "ofw_t", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    done = subprocess.run(
        omniflash_cmd("worker", "--server", url, "--workers", "1"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert said in out and f"protocol {PROTOCOL_VERSION}" in out, out
    assert "Run the same omniflash version on the server and its workers" in out
    assert seen == ["GET /worker/v1/config"]  # it claimed nothing
    assert time.monotonic() - started < 60


def test_a_lease_this_worker_cannot_read_is_handed_back() -> None:
    seen: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.url.path, body))
        if request.url.path == "/worker/v1/claim":
            spec = {**LEASE["spec"], "audio": True}  # a field of a newer server
            return httpx.Response(200, json={"lease": {**LEASE, "spec": spec}})
        return httpx.Response(200, json={"held": True})

    source = _scripted(handler)
    stopped: list[str] = []
    source.on_rejected = stopped.append
    with pytest.raises(ProtocolError, match="cannot read"):
        source.claim("w-0", 0.0)
    assert seen[-1] == ("/worker/v1/tasks/task_1/release", {"epoch": 3})
    assert source.held() == 0
    # The process stops: nothing more is claimed.
    assert len(stopped) == 1 and source.broken == stopped[0]
    assert source.claim("w-0", 0.0) is None and len(seen) == 2


def test_a_claim_whose_request_was_cancelled_hands_the_task_back(api: Api) -> None:
    services = api.client.app.state.services  # type: ignore[attr-defined]
    (worker,) = api.store.workers.all()
    task_id = api.submit()
    claim = services.store.tasks.claim

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        got = claim(*args, **kwargs)
        time.sleep(0.5)  # committed; the client hangs up meanwhile
        return got

    services.store.tasks.claim = slow_claim
    try:

        async def hang_up() -> None:
            pending = asyncio.ensure_future(_claim_once(services, "gpu-1/w", worker))
            await asyncio.sleep(0.1)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending

        asyncio.run(hang_up())
    finally:
        services.store.tasks.claim = claim
    task = api.task(task_id)
    assert (task.status, task.attempts, task.lease_epoch) == (TaskStatus.PENDING, 0, 1)


def test_a_worker_cannot_keep_a_lease_past_the_time_limit(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=0, lease_s=0.5, task_timeout_s=0.5)
    store = Store(settings.database_url)
    try:
        with TestClient(create_app(settings, store=store, start_workers=False)) as client:
            key, _ = store.keys.create("t", 100_000, 100, 4)
            token, _ = store.workers.create("gpu")
            api = Api(client, store, settings, key, token)
            task_id = api.submit()
            lease = api.worker("POST", "/claim", json={"owner": "w"}).json()["lease"]
            beat = f"/tasks/{task_id}/heartbeat"
            assert api.worker("POST", beat, json={"epoch": lease["epoch"]}).json()["held"]
            time.sleep(1.2)  # the time limit and one lease more
            answer = api.worker("POST", beat, json={"epoch": lease["epoch"]})
            assert answer.json() == {"held": False}
    finally:
        store.close()
