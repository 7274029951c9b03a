"""Preview frames: the worker route's refusals, a good frame as a ``preview`` event whose
signed URL downloads the same bytes, and the frames deleted with their task's files."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from omniflash.blobs import LocalStorage
from omniflash.contract import parse_generation_request
from omniflash.settings import Settings
from omniflash.store import Store, preview_key
from omniflash.store.schema import tasks
from omniflash.worker.source import Lease, StoreTaskSource, store_preview
from omniflash.worker.sweep import sweep_expired_files, sweep_orphans
from omniflash.worker.wake import Waker
from tests.conftest import LiveServer, running_server
from tests.events.sse import HandWorker, events_of, submit, webp

PRIVATE = {"OMNIFLASH_LEASE_SECONDS": "120"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running_server(tmp_path_factory.mktemp("previews"), "--workers", "0", **PRIVATE) as live:
        yield live


@contextlib.contextmanager
def claimed(server: LiveServer, hand: HandWorker) -> Iterator[tuple[str, int]]:
    """A task of the server's key, claimed by ``hand``; failed on the way out."""
    with server.client() as client:
        task_id = submit(client)
    claimed_id, epoch = hand.claim()
    assert claimed_id == task_id
    try:
        yield task_id, epoch
    finally:
        hand.fail(task_id, epoch)


def image(size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_good_preview_is_an_event_whose_url_downloads_it(server: LiveServer) -> None:
    hand = HandWorker.create(server, "good")
    frame = webp((320, 180))
    with claimed(server, hand) as (task_id, epoch), server.client() as client:
        with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
            events = events_of(response)
            assert next(events).data["status"] == "processing"
            assert hand.heartbeat(task_id, epoch, 25)
            assert next(events).kind == "progress"
            assert hand.preview(task_id, epoch, frame).json() == {"held": True}
            event = next(events)
            tall = webp((180, 320))  # 9:16: taller than wide
            assert hand.preview(task_id, epoch, tall).json() == {"held": True}
            second = next(events)
        assert event.kind == "preview"
        assert event.data["task_id"] == task_id
        assert (event.data["index"], event.data["width"], event.data["height"]) == (0, 320, 180)
        assert event.data["progress"] == 25
        assert event.data["expires_at"] > time.time()
        assert event.data["url"].startswith(server.url + "/v1/files/previews/")
        download = httpx.get(event.data["url"], timeout=30)
        assert download.status_code == 200
        assert download.content == frame
        assert download.headers["content-type"] == "image/webp"
        assert (second.data["index"], second.data["width"], second.data["height"]) == (1, 180, 320)
        assert httpx.get(second.data["url"], timeout=30).content == tall
        # A URL whose signature is not this server's downloads nothing.
        forged = event.data["url"].replace("sig=", "sig=0")
        assert httpx.get(forged, timeout=30).status_code in (403, 404)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"not an image at all", 400),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 64, 400),  # a WebP header, no image
        (image((321, 100), "WEBP"), 400),  # too wide
        (image((100, 641), "JPEG"), 400),  # too tall
        (image((64, 64), "PNG"), 400),  # an image, but not a preview's format
        (image((64, 64), "GIF"), 400),
        (b"\x00" * (256 * 1024 + 1), 413),
    ],
)
def test_a_bad_preview_is_refused(server: LiveServer, body: bytes, status: int) -> None:
    hand = HandWorker.create(server, f"bad-{len(body)}-{status}-{body[:4].hex()}")
    with claimed(server, hand) as (task_id, epoch):
        response = hand.preview(task_id, epoch, body)
        assert response.status_code == status, response.text
        assert hand.heartbeat(task_id, epoch, 5)  # the lease is untouched
    with (
        server.client() as client,
        client.stream(
            "GET", f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "0"}
        ) as stream,
    ):
        kinds = [e.kind for e in events_of(stream)]
    assert "preview" not in kinds and kinds[-1] == "end"


def test_another_tokens_task_or_a_stale_epoch_stores_nothing(server: LiveServer) -> None:
    owner, stranger = HandWorker.create(server, "owner"), HandWorker.create(server, "stranger")
    with claimed(server, owner) as (task_id, epoch):
        assert stranger.preview(task_id, epoch, webp()).status_code == 404
        assert owner.preview(task_id, epoch + 1, webp()).json() == {"held": False}
        for bad in ("task_%00", "%ED%A0%80", "x" * 3000, "task_" + "A" * 26):
            assert owner.preview(bad, epoch, webp()).status_code in (404, 414)
        for bad_epoch in ("-1", "abc", str(2**40), ""):
            response = owner.post(
                f"/tasks/{task_id}/previews", params={"epoch": bad_epoch}, content=webp()
            )
            assert response.status_code == 400, (bad_epoch, response.text)
        assert not list((server.data_dir / "blobs" / "previews").glob(f"{task_id}/*"))


def test_a_deleted_video_takes_its_previews_with_it(server: LiveServer) -> None:
    """``DELETE /v1/videos/{id}`` of a running task cancels it and deletes its files, the
    preview frames among them: their signed URLs download nothing afterwards."""
    hand = HandWorker.create(server, "deleted")
    with server.client() as client:
        task_id = submit(client)
        _, epoch = hand.claim()
        with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
            events = events_of(response)
            assert next(events).data["status"] == "processing"
            assert hand.preview(task_id, epoch, webp()).json() == {"held": True}
            url = next(events).data["url"]
        assert httpx.get(url, timeout=30).status_code == 200
        assert client.delete(f"/v1/videos/{task_id}").json()["deleted"] is True
        assert httpx.get(url, timeout=30).status_code == 404


def test_previews_go_with_their_tasks_files(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    storage = LocalStorage(tmp_path / "blobs")
    try:
        _, key = store.keys.create("k", 10**9, 1000, 100)
        spec = parse_generation_request({"model": "Omni-Flash-Ext", "prompt": "p"})
        kept = store.tasks.submit(key, spec, millicredits=10, estimated_time=1, seed=1).task.id
        swept = store.tasks.submit(key, spec, millicredits=10, estimated_time=1, seed=1).task.id
        leases = []
        for _ in range(2):
            claim = store.tasks.claim("w", 60)
            assert claim is not None
            task = claim.task
            leases.append(Lease(task.id, task.spec, task.seed, task.attempts, claim.epoch))
        source = StoreTaskSource(Settings(data_dir=tmp_path / "data"), store, storage, Waker())
        for lease in leases:
            source.preview(lease, webp(), 160, 90)
            assert store_preview(store, storage, lease, webp(), width=160, height=90)
        assert storage.exists(preview_key(swept, 0)) and storage.exists(preview_key(swept, 1))
        assert not store_preview(
            store, storage, Lease(swept, spec, 1, 1, 99), webp(), width=1, height=1
        )
        assert not storage.exists(preview_key(swept, 2))  # refused: its blob is gone again
        for lease in leases:
            store.tasks.fail(lease.task_id, lease.epoch, "x", retry=False, max_attempts=1)
        assert len(store.events.since(key.id, 0, task_id=swept)) == 4  # status, 2 previews, end
        # The swept task's files are due, the kept one's not yet.
        with store.db.write() as conn:
            conn.execute(tasks.update().where(tasks.c.id == swept).values(completed_at=0.0))
        assert sweep_expired_files(store, storage, ttl_s=3600) == 1
        assert not list(storage.keys_older(f"previews/{swept}/", time.time() + 60))
        assert store.events.since(key.id, 0, task_id=swept) == []  # its events went too
        assert storage.exists(preview_key(kept, 0))
        assert len(store.events.since(key.id, 0, task_id=kept)) == 4
        # A preview no task will own (its task does not exist) goes with the orphans.
        storage.put_bytes("previews/task_01ZZZZZZZZZZZZZZZZZZZZZZZZ/0.webp", webp(), "image/webp")
        assert sweep_orphans(store, storage, older_than_s=-60, upload_ttl_s=0) >= 1
        assert not storage.exists("previews/task_01ZZZZZZZZZZZZZZZZZZZZZZZZ/0.webp")
        assert storage.exists(preview_key(kept, 0))
    finally:
        store.close()
