"""In-process workers: a result is checked before its task completes, and priced by its file."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniflash.blobs import LocalStorage
from omniflash.contract import parse_generation_request
from omniflash.pricing import Pricing
from omniflash.settings import Settings
from omniflash.store import Store, TaskStatus
from omniflash.worker import StoreTaskSource, Waker
from tests.remote.videos import mp4_bytes, png_bytes
from tests.store.test_races import assert_money

TEXT = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "p", "duration": 4})
VIDEO = parse_generation_request(
    {"model": "Omni-Flash-Ext", "prompt": "p", "video_urls": ["https://example.com/v.mp4"]}
)


@pytest.fixture
def source(store: Store, tmp_path: Path) -> StoreTaskSource:
    settings = Settings(data_dir=tmp_path / "data", max_attempts=3)
    store.keys.create("k", 100_000, 600, 10)
    return StoreTaskSource(settings, store, LocalStorage(settings.blobs_dir), Waker())


def _output(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "out.mp4"
    path.write_bytes(data)
    return path


def test_a_bad_result_fails_the_attempt_and_the_last_one_refunds(
    source: StoreTaskSource, tmp_path: Path
) -> None:
    store = source.store
    key = store.keys.get(1)
    task = store.tasks.submit(
        key, TEXT, millicredits=Pricing().hold(TEXT), estimated_time=1, seed=1
    )
    task_id = task.task.id
    for attempt, data in enumerate([bytes(4096), png_bytes(), mp4_bytes(64, 64, 4)], start=1):
        lease = source.claim("w", 0)
        assert lease is not None and lease.task_id == task_id
        assert source.complete(lease, _output(tmp_path, data), {"duration": 4}) is False
        assert list(source.storage.keys()) == [], "the refused file is deleted"  # type: ignore[attr-defined]
        row = store.tasks.get(task_id)
        assert row.attempts == attempt
        expected = TaskStatus.PENDING if attempt < 3 else TaskStatus.FAILED
        assert row.status is expected
    assert "refused" in (store.tasks.get(task_id).error or "")
    assert store.keys.get(1).balance == 100_000
    assert_money(store)


def test_a_reference_video_task_pays_for_the_seconds_its_file_holds(
    source: StoreTaskSource, tmp_path: Path
) -> None:
    store = source.store
    held = Pricing().hold(VIDEO)  # ten seconds of 720p
    task = store.tasks.submit(store.keys.get(1), VIDEO, millicredits=held, estimated_time=1, seed=1)
    lease = source.claim("w", 0)
    assert lease is not None
    # The worker says ten seconds; the file holds six.
    report = {"duration": 10, "frames": 240}
    assert source.complete(lease, _output(tmp_path, mp4_bytes(1280, 720, 6 * 24)), report)
    row = store.tasks.get(task.task.id)
    assert row.status is TaskStatus.COMPLETED
    assert row.credits == Pricing().millicredits("720p", 6) < held
    assert (row.info["duration"], row.info["frames"]) == (6, 144)
    assert store.keys.get(1).balance == 100_000 - row.credits
    assert_money(store)
