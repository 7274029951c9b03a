"""The worker loop outlives its source's failures; pools of several processes share scratch."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from omniflash.api.app import create_app
from omniflash.blobs import LocalStorage
from omniflash.contract import parse_generation_request
from omniflash.pricing import Pricing
from omniflash.settings import Settings
from omniflash.store import Store, TaskStatus
from omniflash.worker import StoreTaskSource, Waker, WorkerPool
from omniflash.worker.pool import ScratchDir
from omniflash.worker.supervisor import duration_text

SPEC = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "a storm", "duration": 4})


def flaky(method: Any, failures: int) -> Any:
    """``method``, failing ``failures`` times first as a database that is down would."""
    left = [failures]

    def call(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("database is locked"))
        return method(*args, **kwargs)

    return call


def submit(store: Store, key: Any) -> Any:
    return store.tasks.submit(
        key, SPEC, millicredits=Pricing().hold(SPEC), estimated_time=1, seed=3
    ).task


@pytest.mark.timeout(90)
def test_database_errors_do_not_kill_the_worker(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", workers=1, poll_interval_s=0.1, x264_preset="ultrafast"
    )
    store = Store(settings.database_url)
    storage = LocalStorage(settings.blobs_dir)
    _, key = store.keys.create("k", 10_000, 60, 4)
    store.tasks.claim = flaky(store.tasks.claim, 3)  # type: ignore[method-assign]
    store.tasks.complete = flaky(store.tasks.complete, 3)  # type: ignore[method-assign]
    pool = WorkerPool(settings, StoreTaskSource(settings, store, storage, Waker()))
    pool.workers[0].BACKOFF_S = (0.05, 0.2)  # type: ignore[misc]
    pool.start()
    try:
        task = store.tasks.submit(
            key, SPEC, millicredits=Pricing().hold(SPEC), estimated_time=1, seed=3
        ).task
        deadline = time.monotonic() + 60
        while store.tasks.get(task.id).status is not TaskStatus.COMPLETED:
            assert time.monotonic() < deadline, repr(pool)
            time.sleep(0.1)
        worker = pool.workers[0]
        assert worker.is_alive() and worker.completed == 1
        assert worker.source_errors >= 6, repr(worker)  # 3 failed claims, 3 failed completes
        assert storage.exists(store.tasks.get(task.id).result_key or "")
    finally:
        pool.close()
        store.close()


def test_healthz_reports_dead_workers_and_database_errors(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    store = Store(settings.database_url)
    app = create_app(settings, store=store, start_workers=False)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200

        @dataclasses.dataclass
        class DeadPool:
            workers: list[object]

            def alive(self) -> int:
                return 0

        app.state.services.pool = DeadPool(workers=[object(), object()])
        answer = client.get("/healthz")
        assert answer.status_code == 503
        assert answer.json()["problems"] == ["2 of 2 workers stopped"]
        app.state.services.pool = None
        store.db.engine.dispose()
        store.db.engine = sa.create_engine(f"sqlite:///{tmp_path / 'gone' / 'x.db'}")
        answer = client.get("/healthz")
        assert answer.status_code == 503 and answer.json()["status"] == "degraded"


def test_a_starting_process_leaves_other_processes_scratch_alone(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    mine = ScratchDir(root)
    running = mine.open() / "task_1.1"
    running.mkdir()
    (running / "out.mp4.part").write_bytes(b"half a video")
    dead = root / "12345-deadbeef"  # a directory whose process is gone: its lock is free
    dead.mkdir()
    (dead / ".lock").touch()
    other = ScratchDir(root)
    other.open()
    try:
        assert (running / "out.mp4.part").exists(), "a live process's files stay"
        assert not dead.exists(), "a dead process's files go"
    finally:
        other.close()
        mine.close()
    assert not mine.path.exists()


def test_durations_read_as_a_person_writes_them() -> None:
    assert duration_text(8) == "8 s"
    assert duration_text(60) == "1 min"
    assert duration_text(90) == "1 min 30 s"
    assert duration_text(900) == "15 min"


def test_stop_hands_a_running_task_back(tmp_path: Path) -> None:
    """A graceful stop releases the task: pending again, its attempt not counted."""
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=1,
        poll_interval_s=0.1,
        engine="tests.worker.fake_engines:Slow",
    )
    store = Store(settings.database_url)
    storage = LocalStorage(settings.blobs_dir)
    _, key = store.keys.create("k", 10_000, 60, 4)
    pool = WorkerPool(settings, StoreTaskSource(settings, store, storage, Waker()))
    pool.start()
    try:
        task = store.tasks.submit(
            key, SPEC, millicredits=Pricing().hold(SPEC), estimated_time=1, seed=3
        ).task
        deadline = time.monotonic() + 60
        while store.tasks.get(task.id).status is not TaskStatus.PROCESSING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        closer = threading.Thread(target=pool.close)
        closer.start()
        closer.join(30)
        row = store.tasks.get(task.id)
        assert (row.status, row.attempts) == (TaskStatus.PENDING, 0)
        assert pool.workers[0].released == 1
    finally:
        pool.close()
        store.close()


def test_a_result_for_a_cancelled_task_is_not_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    store = Store(settings.database_url)
    storage = LocalStorage(settings.blobs_dir)
    _, key = store.keys.create("k", 10_000, 60, 4)
    source = StoreTaskSource(settings, store, storage, Waker())
    task = submit(store, key)
    lease = source.claim("w", 0)
    assert lease is not None and lease.task_id == task.id
    store.tasks.cancel(task.id, key.id)
    output = tmp_path / "out.mp4"
    output.write_bytes(b"a finished video nobody will pay for")
    assert not source.complete(lease, output, {"duration": 4})
    assert list(storage.keys()) == [], "the file is deleted, not orphaned"
    assert store.keys.get(key.id).balance == store.keys.ledger_sum(key.id) == 10_000


def test_a_failed_task_does_not_show_the_servers_paths(tmp_path: Path) -> None:
    from omniflash.worker.child import _run_job

    workdir = tmp_path / "scratch" / "task_1.1"

    class Cancel:
        def is_set(self) -> bool:
            return False

    for output in (workdir / "out.mp4", workdir.parent / "task_1.1.mp4"):
        leaked = str(output) + ".part"

        class Leaky:
            name = "leaky"

            def generate(self, job: Any, progress: Any, cancelled: Any) -> Any:
                raise OSError(28, "No space left on device", leaked)  # noqa: B023

        payload = {
            "task_id": "task_1",
            "spec": SPEC.to_json(),
            "seed": 1,
            "workdir": str(workdir),
            "output_path": str(output),
        }
        outcome = _run_job(Leaky(), payload, None, Cancel(), Settings(data_dir=tmp_path))  # type: ignore[arg-type]
        assert outcome[:2] == ("error", "engine")
        assert "No space left on device" in outcome[2] and str(tmp_path) not in outcome[2]
