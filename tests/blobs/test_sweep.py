"""The orphan sweep, on a local directory and an S3 bucket, over SQLite and PostgreSQL.

Files that no task will ever own are deleted once they are old enough: results of
attempts that died after uploading, inputs of submits that made no task, uploads whose
URLs expired, ``.part`` files of interrupted writes.  A live task's files stay.
"""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from omniflash.api.app import create_app
from omniflash.api.intake import store_inline_inputs
from omniflash.blobs import LocalStorage, Storage, StorageUnavailable
from omniflash.contract import parse_generation_request
from omniflash.errors import PaymentRequired
from omniflash.ids import ulid
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.worker.sweep import sweep_expired_files, sweep_orphans
from tests.plain_reads import tasks_of
from tests.store.test_races import assert_money

pytestmark = pytest.mark.timeout(120)


def png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 40, 90)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _spec_with_image(storage: Storage) -> tuple[object, list[str]]:
    body = {"model": "Omni-Flash-Ext", "prompt": "p", "image_urls": [png_data_uri()]}
    return store_inline_inputs(parse_generation_request(body), storage, f"inputs/{ulid()}")


def test_orphans_go_by_age_and_live_files_stay(
    store: Store, storage: Storage, tmp_path: Path
) -> None:
    _, key = store.keys.create("k", 10**9, 10**6, 10**6)

    def submit(storage: Storage) -> tuple[str, list[str]]:
        spec, written = _spec_with_image(storage)
        task = store.tasks.submit(key, spec, millicredits=1000, estimated_time=1, seed=1)  # type: ignore[arg-type]
        return task.task.id, written

    # A completed task: its result and input are in use; an older attempt's file is not.
    done, done_inputs = submit(storage)
    claim = store.tasks.claim("w", 60)
    assert claim is not None and claim.task.id == done
    done_result = f"results/{done}.{claim.epoch}.mp4"
    dead_attempt = f"results/{done}.{claim.epoch + 7}.mp4"
    assert store.tasks.complete(done, claim.epoch, result_key=done_result, ttl_s=3600)
    # A task still running, whose worker has uploaded and is about to complete.
    running, running_inputs = submit(storage)
    claim = store.tasks.claim("w", 60)
    assert claim is not None and claim.task.id == running
    uploading = f"results/{running}.{claim.epoch}.mp4"
    # A submit that stored its image and made no task; a result of a task that never was.
    _, half_stored = _spec_with_image(storage)
    no_task = f"results/task_{ulid()}.1.mp4"
    upload = f"uploads/{ulid()}.png"
    foreign = ["results/by-hand.mp4", "inputs/not-ours/a.png"]
    for blob in [done_result, dead_attempt, uploading, no_task, upload, *foreign]:
        storage.put_bytes(blob, b"x", "application/octet-stream")
    part = f"results/{done}.9.mp4.123.456.part"
    if isinstance(storage, LocalStorage):  # what an interrupted put leaves
        (storage.root / part).write_bytes(b"half")
    else:
        storage.put_bytes(part, b"half", "application/octet-stream")
    temp = tmp_path / "uploads"
    temp.mkdir()
    (temp / f"{running}.1.abc.part").write_bytes(b"half an upload")

    orphans = {dead_attempt, no_task, part, *half_stored}
    live = {done_result, uploading, upload, *done_inputs, *running_inputs, *foreign}
    assert orphans | live <= set(storage.keys_older("", time.time() + 1))

    def sweep(now: float) -> int:
        return sweep_orphans(
            store, storage, older_than_s=600, upload_ttl_s=3600, temp_dir=temp, now=now
        )

    assert sweep(time.time()) == 0, "nothing is judged before it is old enough"
    assert sweep(time.time() + 1200) == len(orphans) + 1  # and the temp .part
    left = set(storage.keys_older("", time.time() + 1))
    assert not left & orphans
    assert live <= left
    assert not list(temp.iterdir())
    # Uploads go once their URL has expired too.
    assert sweep(time.time() + 1200 + 3600) == 1
    assert upload not in set(storage.keys_older("", time.time() + 1))
    # A task whose files the expired sweep deleted owns nothing any more.
    with store.db.write() as conn:
        conn.execute(sa.text("UPDATE tasks SET result_expires_at = 0 WHERE id = :id"), {"id": done})
    assert sweep_expired_files(store, storage, ttl_s=3600) == 1
    assert sweep(time.time() + 1200) == 0
    assert live - {done_result, upload, *done_inputs} <= set(
        storage.keys_older("", time.time() + 1)
    )
    assert_money(store)


def test_the_expired_sweep_skips_a_task_whose_files_cannot_go(store: Store, tmp_path: Path) -> None:
    """A task whose files raise is reported and marked; the others are swept."""
    storage = LocalStorage(tmp_path / "blobs")
    seen: list[tuple[str, str]] = []
    store.tasks.error_hooks.append(lambda job, item: seen.append((job, item)))
    _, key = store.keys.create("k", 10**9, 10**6, 10**6)
    ids = []
    for _ in range(3):
        spec, _written = _spec_with_image(storage)
        ids.append(
            store.tasks.submit(key, spec, millicredits=1, estimated_time=1, seed=1).task.id  # type: ignore[arg-type]
        )
        claim = store.tasks.claim("w", 60)
        assert claim is not None
        assert store.tasks.complete(
            ids[-1], claim.epoch, result_key=f"results/{ids[-1]}.1.mp4", ttl_s=-1
        )
    # The second task's result key escapes the storage root: delete refuses it.
    with store.db.write() as conn:
        conn.execute(
            sa.text("UPDATE tasks SET result_key = '../../etc/passwd' WHERE id = :id"),
            {"id": ids[1]},
        )
    assert sweep_expired_files(store, storage, ttl_s=3600) == 3
    assert seen == [("sweep", ids[1])]
    assert not store.tasks.expired(ttl_s=3600), "marked: it does not come back every pass"
    left = set(storage.keys_older("", time.time() + 1))
    assert left == {k for k in left if ids[1] in k or k.startswith("inputs/")}
    assert not any(ids[0] in k or ids[2] in k for k in left)


def test_a_submit_whose_outcome_is_unknown_keeps_its_inputs(tmp_path: Path) -> None:
    """A refused submit deletes the image it stored; one whose commit may have happened
    (the connection dropped) keeps it, for the task or else for the orphan sweep."""
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    store = Store(settings.database_url)
    try:
        with TestClient(create_app(settings, store=store, start_workers=False)) as client:
            key, _info = store.keys.create("k", 10**9, 10**6, 10**6)
            body = {"model": "Omni-Flash-Ext", "prompt": "p", "image_urls": [png_data_uri()]}
            auth = {"Authorization": f"Bearer {key}"}
            blobs = settings.blobs_dir

            def stored() -> int:
                return sum(1 for p in blobs.rglob("*") if p.is_file()) if blobs.exists() else 0

            real = store.tasks.submit

            def refused(*args: object, **kwargs: object) -> object:
                raise PaymentRequired()

            store.tasks.submit = refused  # type: ignore[method-assign,assignment]
            assert client.post("/v1/videos/generations", json=body, headers=auth).status_code == 402
            assert stored() == 0

            def lost(*args: object, **kwargs: object) -> object:
                real(*args, **kwargs)  # type: ignore[arg-type]
                raise sa.exc.OperationalError("COMMIT", {}, OSError("connection lost"))

            store.tasks.submit = lost  # type: ignore[method-assign,assignment]
            response = client.post("/v1/videos/generations", json=body, headers=auth)
            assert response.status_code == 503, "an outage, not a client's mistake"
            assert stored() == 1, "the task that was made has its input"
            (task,) = tasks_of(store, _info.id)
            assert task.spec.image_urls[0].startswith("blob:inputs/")
    finally:
        store.close()


def test_local_part_files_are_listed_by_age(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "blobs")
    storage.put_bytes("inputs/a/0.png", b"x", "image/png")
    (storage.root / "inputs/a/1.png.1.2.part").write_bytes(b"y")
    old = time.time() - 1000
    os.utime(storage.root / "inputs/a/0.png", (old, old))
    assert list(storage.keys_older("inputs/", time.time() - 500)) == ["inputs/a/0.png"]
    assert sorted(storage.keys_older("inputs/", time.time() + 1)) == [
        "inputs/a/0.png",
        "inputs/a/1.png.1.2.part",
    ]
    assert list(storage.keys_older("results/", time.time() + 1)) == []


def test_a_later_pass_judges_only_what_came_of_age_since(store: Store, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "blobs")
    _, half_stored = _spec_with_image(storage)
    written = time.time()
    later = written + 1200

    def sweep(since: float) -> int:
        return sweep_orphans(
            store, storage, older_than_s=600, upload_ttl_s=3600, now=later, since=since
        )

    assert sweep(since=written + 1) == 0, "judged at an earlier pass already"
    assert set(half_stored) <= set(storage.keys_older("", later))
    assert sweep(since=written - 10) == len(half_stored)
    assert not list(storage.keys_older("", later))


def test_an_unreachable_bucket_stops_the_pass_and_marks_nothing(
    store: Store, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "blobs")
    _, key = store.keys.create("k", 10**9, 10**6, 10**6)
    spec, _written = _spec_with_image(storage)
    task_id = store.tasks.submit(key, spec, millicredits=1, estimated_time=1, seed=1).task.id  # type: ignore[arg-type]
    store.tasks.cancel(task_id, key.id)

    def down(key: str) -> None:
        raise StorageUnavailable("the bucket does not answer")

    storage.delete = down  # type: ignore[method-assign]
    with pytest.raises(StorageUnavailable):
        sweep_expired_files(store, storage, ttl_s=-1)
    assert [t.id for t in store.tasks.expired(ttl_s=-1)] == [task_id], "tried again next pass"
