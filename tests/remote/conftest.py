"""Fixtures of the remote-worker tests: the API in process, and real worker processes."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from omniflash.api.app import create_app
from omniflash.settings import Settings
from omniflash.store import Store, TaskRow
from tests.conftest import LiveServer, make_live_server, omniflash_cmd
from tests.plain_reads import key_of


@dataclasses.dataclass
class Api:
    """The app in process (no workers, no reaper), a funded key and a worker token."""

    client: TestClient
    store: Store
    settings: Settings
    key: str
    token: str

    def submit(self, **fields: Any) -> str:
        body = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4, **fields}
        response = self.client.post(
            "/v1/videos/generations", json=body, headers={"Authorization": f"Bearer {self.key}"}
        )
        assert response.status_code == 200, response.text
        return str(response.json()["data"][0]["task_id"])

    def worker(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        return self.client.request(method, "/worker/v1" + path, headers=headers, **kwargs)

    def task(self, task_id: str) -> TaskRow:
        return self.store.tasks.get(task_id)

    def balance(self) -> int:
        key = key_of(self.store, self.key)
        assert key is not None
        return key.balance


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path / "data", workers=0, lease_s=5.0, poll_interval_s=0.2)
    store = Store(settings.database_url)
    try:
        with TestClient(create_app(settings, store=store, start_workers=False)) as client:
            key, _ = store.keys.create("t", 10_000_000, 10_000, 10)
            token, _ = store.workers.create("gpu-1")
            yield Api(client, store, settings, key, token)
    finally:
        store.close()


def png_data_uri(
    colour: tuple[int, int, int] = (220, 30, 30), size: tuple[int, int] = (64, 48)
) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclasses.dataclass
class WorkerProcess:
    """A real ``omniflash worker`` process; its output goes to a log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_idle(self, timeout: float = 60) -> None:
        """Until its engine is loaded: from then on it waits in a claim."""
        deadline = time.monotonic() + timeout
        while "preview engine" not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log()}")
            time.sleep(0.05)
        time.sleep(0.3)  # from the engine's ready message to the first claim

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode


def worker_token(server: LiveServer, name: str) -> str:
    out = server.cli("workers", "create", "--name", name)
    return out.stdout.strip().splitlines()[-1]


def start_worker(server: LiveServer, token: str, name: str, **env: str) -> WorkerProcess:
    """``omniflash worker`` for ``server``: no database URL and no data dir of the server's."""
    worker_env = {
        k: v
        for k, v in server.env.items()
        if k not in ("OMNIFLASH_DATABASE_URL", "OMNIFLASH_DATA_DIR")
    }
    worker_env.update({"OMNIFLASH_WORKER_TOKEN": token, **env})
    scratch = server.data_dir.parent / f"worker-{name}"
    log_path = server.data_dir.parent / f"worker-{name}-{time.time_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            omniflash_cmd(
                "worker", "--server", server.url, "--workers", "1", "--data-dir", str(scratch)
            ),
            env=worker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(proc, log_path)


@contextlib.contextmanager
def running_worker(server: LiveServer, name: str, **env: str) -> Iterator[WorkerProcess]:
    worker = start_worker(server, worker_token(server, name), name, **env)
    try:
        worker.wait_idle()
        yield worker
    finally:
        worker.stop()


@contextlib.contextmanager
def running_fleet(
    tmp_path: Path, worker: str, **server_env: str
) -> Iterator[tuple[LiveServer, WorkerProcess]]:
    """``omniflash serve --workers 0`` and one remote worker, started side by side.

    The worker is started first: it waits for its server, as in a fleet that boots in
    any order.
    """
    server = make_live_server(tmp_path, "--workers", "0", **server_env)
    remote = start_worker(server, worker_token(server, worker), worker)
    try:
        server.start()
        try:
            remote.wait_idle()
            yield server, remote
        finally:
            remote.stop()
    finally:
        remote.stop()
        server.stop()
    server.assert_money()
