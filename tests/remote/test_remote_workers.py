"""Remote workers end to end: ``omniflash serve --workers 0`` and ``omniflash worker`` processes."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from omniflash.store import Store, TaskStatus
from omniflash.store.schema import ledger
from tests.conftest import LiveServer, _truncate, make_live_server, wait_for_task
from tests.remote.conftest import (
    WorkerProcess,
    png_data_uri,
    running_fleet,
    running_worker,
    start_worker,
    worker_token,
)
from tests.service.test_service import balance, decode, download, submit
from tests.store.test_races import assert_money

LONG = {"resolution": "4k", "duration": 10}
"""A task that is still running several seconds after it started."""
MEDIUM = {"resolution": "720p", "duration": 8}
"""A task that runs for a second or two."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, WorkerProcess]]:
    """An API server without workers of its own, and one remote worker."""
    with running_fleet(tmp_path_factory.mktemp("fleet"), "gpu-1") as (server, worker):
        yield server, worker


def store_of(server: LiveServer) -> Store:
    return Store(
        server.env.get("OMNIFLASH_DATABASE_URL")
        or f"sqlite:///{server.data_dir.resolve() / 'omniflash.db'}",
        migrate=False,
    )


def wait_idle(server: LiveServer) -> None:
    """Until no task of the key is in flight, then a moment for the worker to claim again."""
    deadline = time.monotonic() + 60
    with server.client() as client:
        while any(
            t["status"] in ("pending", "processing") for t in client.get("/v1/tasks").json()["data"]
        ):
            assert time.monotonic() < deadline, "tasks still in flight"
            time.sleep(0.05)
    time.sleep(0.3)


def dispatch_latency(server: LiveServer, submit_to: LiveServer | None = None) -> float:
    """Seconds from the start of a submit until the task shows ``processing``."""
    started = time.monotonic()
    task_id = submit(submit_to or server)
    answered = time.monotonic()
    with server.client() as client:
        while client.get(f"/v1/tasks/{task_id}").json()["data"]["status"] == "pending":
            assert time.monotonic() - started < 10, "no worker took the task"
            time.sleep(0.01)
        latency = time.monotonic() - started
        print(
            f"\n  submit → processing {1000 * latency:.0f} ms "
            f"(the submit's own answer took {1000 * (answered - started):.0f} ms)",
            end="",
        )
        assert wait_for_task(client, task_id)["status"] == "completed"
    return latency


def test_tasks_and_their_inputs_travel_through_the_api(
    fleet: tuple[LiveServer, WorkerProcess],
) -> None:
    server, worker = fleet
    text_task = submit(server, resolution="720p", duration=4)
    frame_task = submit(server, image_urls=[png_data_uri((230, 20, 20), (320, 240))])
    with server.client() as client:
        text = wait_for_task(client, text_task)
        frame = wait_for_task(client, frame_task)
    assert text["status"] == "completed" and frame["status"] == "completed"
    info = decode(download(text["result"]["videos"][0]["url"][0]))  # type: ignore[index]
    assert (info["width"], info["height"], len(info["frames"])) == (1280, 720, 96)
    first = decode(download(frame["result"]["videos"][0]["url"][0]))["frames"][0]  # type: ignore[index]
    red, green, blue = first[360, 640]
    assert red > 180 and green < 80 and blue < 80, "the video starts on the inline image"
    log = worker.log()
    assert f"server {server.url}" in log and "engine preview, 1 worker(s)" in log
    assert "worker_token" not in log and "ofw_" not in log
    listing = server.cli("workers", "list").stdout
    assert "gpu-1" in listing and "active" in listing and "never" not in listing


def test_an_idle_worker_is_handed_a_new_task_at_once(
    fleet: tuple[LiveServer, WorkerProcess],
) -> None:
    server, _worker = fleet
    latencies = []
    for _ in range(3):
        wait_idle(server)
        latencies.append(dispatch_latency(server))
    assert max(latencies) < 1.5


def test_cancel_of_a_running_remote_task(fleet: tuple[LiveServer, WorkerProcess]) -> None:
    server, worker = fleet
    wait_idle(server)
    before = balance(server)
    task_id = submit(server, **LONG)
    with server.client() as client:
        wait_for_task(client, task_id, until=("processing",))
        assert client.post(f"/v1/tasks/{task_id}/cancel").json()["data"]["status"] == "cancelled"
        assert client.post(f"/v1/tasks/{task_id}/cancel").status_code == 409
        assert balance(server) == before
        next_task = submit(server)
        assert wait_for_task(client, next_task, timeout=30)["status"] == "completed"
    assert balance(server) == before - 1.0  # one 4 s task; the cancelled one refunded once
    assert f"{task_id} is no longer ours" in worker.log()


def test_tokens_and_keys_do_not_cross_on_a_live_server(
    fleet: tuple[LiveServer, WorkerProcess],
) -> None:
    server, _worker = fleet
    token = worker_token(server, "crossing")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/v1/tasks").status_code == 401
        assert client.get("/worker/v1/config").status_code == 200
    with server.client() as client:
        answer = client.post("/worker/v1/claim", json={"owner": "w", "wait_s": 0})
        assert (
            answer.status_code == 401 and answer.json()["error"]["type"] == "authentication_error"
        )


def test_a_revoked_worker_exits_with_a_message(fleet: tuple[LiveServer, WorkerProcess]) -> None:
    server, _worker = fleet
    token = worker_token(server, "doomed")
    running = start_worker(server, token, "doomed", OMNIFLASH_CLAIM_WAIT="1")
    starting: WorkerProcess | None = None
    try:
        running.wait_idle()
        server.cli("workers", "revoke", "doomed")
        starting = start_worker(server, token, "doomed-again")
        assert running.proc.wait(timeout=20) == 1
        assert "refused this worker's token (HTTP 401" in running.log()
        assert starting.proc.wait(timeout=30) == 1
        assert "Error:" in starting.log() and "HTTP 401" in starting.log()
    finally:
        running.stop()
        if starting is not None:
            starting.stop()


def test_sigterm_hands_a_running_task_back_untried(tmp_path: Path) -> None:
    with running_fleet(tmp_path, "first") as (server, first):
        store = store_of(server)
        try:
            task_id = submit(server, **MEDIUM)
            with server.client() as client:
                wait_for_task(client, task_id, until=("processing",))
            assert store.tasks.get(task_id).attempts == 1
            assert first.stop(signal.SIGTERM, timeout=20) == 0
            task = store.tasks.get(task_id)
            assert task.status is TaskStatus.PENDING and task.attempts == 0
            assert "released=1" in first.log()
            with running_worker(server, "second"), server.client() as client:
                assert wait_for_task(client, task_id, timeout=60)["status"] == "completed"
            task = store.tasks.get(task_id)
            assert task.attempts == 1 and task.result_key == f"results/{task_id}.2.mp4"
        finally:
            store.close()


def test_a_server_killed_mid_task_loses_nothing_and_finishes_once(tmp_path: Path) -> None:
    with running_fleet(tmp_path, "steady") as (server, worker):
        store = store_of(server)
        try:
            task_id = submit(server, **MEDIUM)
            with server.client() as client:
                wait_for_task(client, task_id, until=("processing",))
            server.kill()
            time.sleep(1.0)
            assert worker.proc.poll() is None, "the worker outlives its server"
            server.start()  # the same port and data
            with server.client() as client:
                data = wait_for_task(client, task_id, timeout=60)
            assert data["status"] == "completed", data
            assert worker.proc.poll() is None
            assert "unavailable" in worker.log() or "could not" in worker.log()
            task = store.tasks.get(task_id)
            results = server.data_dir / "blobs" / "results"
            blobs = sorted(p.name for p in results.glob(f"{task_id}.*"))
            assert task.result_key is not None and blobs == [task.result_key.rsplit("/", 1)[1]]
            with store.db.read() as conn:
                reasons = conn.execute(
                    sa.select(ledger.c.reason).where(ledger.c.task_id == task_id)
                ).scalars()
                assert sorted(reasons) == ["charge"]  # charged once, kept in full
            assert balance(server) == 100 - data["credits_cost"]  # type: ignore[operator]
            # The worker's long poll does not hold up a shutdown of its server.
            started = time.monotonic()
            server.stop()
            assert server.proc is not None and server.proc.returncode == 0
            assert time.monotonic() - started < 8
        finally:
            store.close()


@pytest.mark.postgres
def test_replicas_on_postgres_wake_a_worker_polling_another(
    postgres_url: str, tmp_path: Path
) -> None:
    """The worker long-polls replica A; tasks submitted to replica B reach it by NOTIFY."""
    store = Store(postgres_url)
    _truncate(store)
    store.close()
    first = make_live_server(tmp_path, "--workers", "0", OMNIFLASH_DATABASE_URL=postgres_url)
    other = LiveServer(data_dir=first.data_dir, env=first.env, api_key=first.api_key)
    other.extra_args = first.extra_args
    worker = start_worker(first, worker_token(first, "pg-gpu"), "pg-gpu")
    try:
        with ThreadPoolExecutor(2) as pool:
            for started in [pool.submit(first.start), pool.submit(other.start)]:
                started.result()
        worker.wait_idle()
        latencies = []
        for _ in range(3):
            wait_idle(first)
            latencies.append(dispatch_latency(first, submit_to=other))
        assert max(latencies) < 1.5
    finally:
        worker.stop()
        other.stop()
        first.stop()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_revoked_workers_running_task_goes_to_another_worker_at_once(
    db: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two real worker processes, two tokens: revoking the first while it generates hands
    its task back at once (not when its 30 s lease runs out); the second finishes it, and
    the task is charged once."""
    env = {"OMNIFLASH_LEASE_SECONDS": "30"}
    if db == "postgres":
        url = request.getfixturevalue("postgres_url")
        store = Store(url)
        _truncate(store)
        store.close()
        env["OMNIFLASH_DATABASE_URL"] = url
    server = make_live_server(tmp_path, "--workers", "0", **env)
    first = start_worker(server, worker_token(server, "rented"), "rented")
    second: WorkerProcess | None = None
    server.start()
    store = store_of(server)
    try:
        first.wait_idle()
        task_id = submit(server, **LONG)
        with server.client() as client:
            wait_for_task(client, task_id, until=("processing",))
        assert store.tasks.get(task_id).lease_worker is not None
        server.cli("workers", "revoke", "rented")
        task = store.tasks.get(task_id)
        assert (task.status, task.attempts) == (TaskStatus.PENDING, 0)
        assert first.proc.wait(timeout=30) == 1
        assert "refused this worker's token (HTTP 401" in first.log()
        second = start_worker(server, worker_token(server, "owned"), "owned")
        with server.client() as client:
            data = wait_for_task(client, task_id, timeout=120)
        assert data["status"] == "completed", data
        task = store.tasks.get(task_id)
        assert task.result_key == f"results/{task_id}.2.mp4" and task.attempts == 1
        with store.db.read() as conn:
            reasons = conn.execute(
                sa.select(ledger.c.reason).where(ledger.c.task_id == task_id)
            ).scalars()
            assert sorted(reasons) == ["charge"]
        assert balance(server) == 100 - data["credits_cost"]  # type: ignore[operator]
        assert_money(store)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        store.close()
        server.stop()
