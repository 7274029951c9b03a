"""Shared fixtures: settings on a temp data dir, stores on SQLite and PostgreSQL, a live server.

PostgreSQL tests run when ``OMNIFLASH_TEST_POSTGRES_URL`` names a server (CI sets it);
each test session gets a fresh database there, dropped at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from omniflash.settings import Settings
from omniflash.store import Store
from tests.money import assert_money, assert_money_at

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PG_ENV = "OMNIFLASH_TEST_POSTGRES_URL"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", workers=1, lease_s=5.0, poll_interval_s=0.2)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need {PG_ENV}=postgresql://user@host:port/db")
    import sqlalchemy as sa

    admin_url = base.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"omniflash_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same store tests run on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    else:
        url = request.getfixturevalue("postgres_url")
        s = Store(url)
        _truncate(s)
    try:
        yield s
        assert_money(s)
    finally:
        s.close()


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Store]:
    """A store on this session's PostgreSQL database, emptied first: for tests that race
    processes on it or kill its connections (and check the money themselves)."""
    store = Store(postgres_url)
    _truncate(store)
    try:
        yield store
    finally:
        store.close()


def _truncate(store: Store) -> None:
    with store.db.write() as conn:
        conn.exec_driver_sql(
            "TRUNCATE idempotency, tasks, ledger, api_keys, worker_tokens, meta "
            "RESTART IDENTITY CASCADE"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def omniflash_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "omniflash", *args]


@dataclass
class LiveServer:
    """A real ``omniflash serve`` process on a free port, with one funded API key."""

    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    api_key: str = ""
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            omniflash_cmd(*args, "--data-dir", str(self.data_dir)),
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def create_key(self, credits: float = 100, *extra: str) -> str:
        out = self.cli("keys", "create", "--name", "test", "--credits", str(credits), *extra)
        return out.stdout.strip().splitlines()[-1]

    def start(self) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}-{time.time_ns()}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            omniflash_cmd(
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.extra_args,
            ),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or an OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def database_url(self) -> str:
        return (
            self.env.get("OMNIFLASH_DATABASE_URL") or Settings(data_dir=self.data_dir).database_url
        )

    def assert_money(self) -> None:
        """The money check (``tests.money``) on this server's database."""
        assert_money_at(self.database_url)

    def client(self, api_key: str | None = None) -> httpx.Client:
        key = api_key or self.api_key
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )


def make_live_server(tmp_path: Path, *args: str, **env: str) -> LiveServer:
    server_env = dict(os.environ)
    server_env.update(
        {
            "OMNIFLASH_ALLOW_PRIVATE_URLS": "1",
            "OMNIFLASH_LEASE_SECONDS": "3",
            "OMNIFLASH_X264_PRESET": "ultrafast",
            "PYTHONUNBUFFERED": "1",
        }
    )
    server_env.update(env)
    server = LiveServer(data_dir=tmp_path / "server-data", env=server_env, extra_args=args)
    server.api_key = server.create_key(100, "--rpm", "100000")
    return server


@contextlib.contextmanager
def running_server(tmp_path: Path, *args: str, **env: str) -> Iterator[LiveServer]:
    """``make_live_server``'s server, started, and stopped on exit."""
    server = make_live_server(tmp_path, *args, **env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    server.assert_money()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    """``omniflash serve`` with 2 workers and the preview engine, and a key with 100 credits."""
    with running_server(tmp_path, "--workers", "2") as server:
        yield server


def wait_for_task(
    client: httpx.Client, task_id: str, timeout: float = 60, until: tuple[str, ...] | None = None
) -> dict[str, object]:
    """Poll until the task ends (or reaches one of ``until``); returns its ``data``."""
    until = until or ("completed", "failed", "cancelled")
    deadline = time.monotonic() + timeout
    while True:
        data: dict[str, object] = client.get(f"/v1/tasks/{task_id}").json()["data"]
        if data["status"] in until:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {data['status']} after {timeout} s")
        time.sleep(0.1)


_REQUIRED = {
    "postgres": "OMNIFLASH_REQUIRE_POSTGRES",
    "browser": "OMNIFLASH_REQUIRE_BROWSER",
    "containers": "OMNIFLASH_REQUIRE_CONTAINERS",
    "kubernetes": "OMNIFLASH_REQUIRE_CONTAINERS",
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Where CI says a service must be there, a test that would skip for want of it fails."""
    outcome: Any = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    for marker, var in _REQUIRED.items():
        if item.get_closest_marker(marker) and os.environ.get(var) == "1":
            report.outcome = "failed"
            report.longrepr = f"{var}=1 but this {marker} test was skipped: {report.longrepr}"
