"""The service on an S3 bucket: inputs and results in the bucket, downloads, the file sweep."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from omniflash.api.app import create_app
from omniflash.api.intake import store_inline_inputs
from omniflash.blobs import S3Storage
from omniflash.contract import parse_generation_request
from omniflash.input_blobs import blob_inputs
from omniflash.settings import Settings
from omniflash.store import Store
from omniflash.task_view import task_public
from omniflash.worker.sweep import sweep_expired_files
from tests.blobs.conftest import unique_prefix
from tests.conftest import free_port, running_server, wait_for_task
from tests.s3_server import S3Server


def png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 160, 220)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _bucket_keys(storage: S3Storage) -> set[str]:
    return {storage.prefix + key for key in list(storage.keys())}


def test_sweep_deletes_expired_files_from_the_bucket(tmp_path: Path, s3_storage: S3Storage) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        _key, info = store.keys.create("t", 10_000, 100, 4)
        tasks = []
        for ttl_s in (-1, 3600):
            body = {"model": "Omni-Flash-Ext", "prompt": "p", "image_urls": [png_data_uri()]}
            spec, written = store_inline_inputs(
                parse_generation_request(body), s3_storage, f"inputs/{unique_prefix().rstrip('/')}"
            )
            task = store.tasks.submit(info, spec, millicredits=1000, estimated_time=5, seed=1).task
            claim = store.tasks.claim("w", 30)
            assert claim is not None and claim.task.id == task.id
            result = f"results/{task.id}.{claim.epoch}.mp4"
            s3_storage.put_bytes(result, b"mp4", "video/mp4")
            assert store.tasks.complete(task.id, claim.epoch, result_key=result, ttl_s=ttl_s)
            tasks.append([result, *written])
        expired, live = tasks
        assert set(expired) | set(live) <= set(s3_storage.keys())

        assert sweep_expired_files(store, s3_storage, ttl_s=3600) == 1
        left = set(s3_storage.keys())
        assert not left & set(expired), "the expired task's result and input are gone"
        assert set(live) <= left, "the live task's files stay"
        assert sweep_expired_files(store, s3_storage, ttl_s=3600) == 0
    finally:
        store.close()


@pytest.fixture
def s3_app(tmp_path: Path, s3: S3Server) -> Iterator[tuple[TestClient, Store, str]]:
    """The app with one in-process worker (preview engine) on its own prefix of the bucket."""
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=1,
        lease_s=5.0,
        poll_interval_s=0.2,
        x264_preset="ultrafast",
        storage_url=s3.storage_url(unique_prefix()),
        s3_endpoint_url=s3.endpoint_url,
        presign_results=True,
    )
    store = Store(settings.database_url)
    key, _info = store.keys.create("t", 100_000, 1000, 4)
    app = create_app(settings, store=store)
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
            yield client, store, key
    finally:
        app.state.services.storage.close()
        store.close()


def _wait(client: TestClient, task_id: str, timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data: dict[str, Any] = client.get(f"/v1/tasks/{task_id}").json()["data"]
        if data["status"] in ("completed", "failed", "cancelled"):
            return data
        assert time.monotonic() < deadline, f"task still {data['status']}"
        time.sleep(0.2)


def _decode(data: bytes) -> tuple[int, int, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.codec_context.width, stream.codec_context.height, frames


def test_a_task_on_s3_from_inline_image_to_downloads(
    s3_app: tuple[TestClient, Store, str], tmp_path: Path
) -> None:
    client, store, _key = s3_app
    storage: S3Storage = client.app.state.services.storage  # type: ignore[attr-defined]
    assert isinstance(storage, S3Storage)
    body = {
        "model": "Omni-Flash-Ext",
        "prompt": "a harbour at dawn",
        "duration": 4,
        "image_urls": [png_data_uri()],
    }
    answer = client.post("/v1/videos/generations", json=body)
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["data"][0]["task_id"]

    (input_key,) = blob_inputs(store.tasks.get(task_id).spec).values()
    assert storage.prefix + input_key in _bucket_keys(storage), "the inline image is in the bucket"

    data = _wait(client, task_id)
    assert data["status"] == "completed", data
    video = data["result"]["videos"][0]
    (presigned,) = video["url"]
    row = store.tasks.get(task_id)
    assert row.result_key is not None and storage.exists(row.result_key)
    assert not (tmp_path / "data" / "blobs").exists(), "nothing on the local disk"

    # With OMNIFLASH_PRESIGN_RESULTS the task shows the bucket's own URL, expiring with it.
    assert presigned.startswith(storage.endpoint_url or "") and "X-Amz-Signature=" in presigned

    # The API's signed URL streams from the bucket: whole, a range, and HEAD.
    services = client.app.state.services  # type: ignore[attr-defined]
    path = services.signer.path(row.result_key, video["expires_at"])
    whole = client.get(path, headers={"Authorization": ""})
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    assert (
        int(whole.headers["content-length"]) == len(whole.content) == storage.size(row.result_key)
    )
    width, height, frames = _decode(whole.content)
    assert (width, height) == (data["request"]["width"], data["request"]["height"])
    assert frames >= 4 * 24

    part = client.get(path, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206 and part.content == whole.content[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{len(whole.content)}"
    tail = client.get(path, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    beyond = client.get(path, headers={"Range": f"bytes={len(whole.content)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(whole.content)}"

    head = client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(whole.content))
    assert head.headers["content-type"] == "video/mp4"
    assert client.head(path, headers={"Range": "bytes=0-9"}).headers["content-length"] == "10"
    assert client.head(path.replace("sig=", "sig=0")).status_code == 403

    # The presigned URL from the task fetches the same bytes, straight from the bucket.
    public = task_public(
        row,
        base_url="http://testserver/",
        signer=services.signer,
        pricing=services.settings.pricing,
        presigner=storage,
    )
    again = public["result"]["videos"][0]
    # Signed anew each time (the signing time is in the URL); the expiry is the task's.
    assert again["expires_at"] == video["expires_at"] and "X-Amz-Signature=" in again["url"][0]
    fetched = httpx.get(presigned, timeout=10)
    assert fetched.status_code == 200 and fetched.content == whole.content


def test_a_missing_object_is_not_found(s3_app: tuple[TestClient, Store, str]) -> None:
    client, _store, _key = s3_app
    services = client.app.state.services  # type: ignore[attr-defined]
    path = services.signer.path("results/none.1.mp4", int(time.time()) + 60)
    for method in ("GET", "HEAD"):
        assert client.request(method, path).status_code == 404


def test_omniflash_serve_on_a_bucket(tmp_path: Path, s3: S3Server) -> None:
    """A real ``omniflash serve`` configured by environment alone, as a fleet replica is."""
    prefix = unique_prefix()
    env = {**s3.env, "OMNIFLASH_STORAGE_URL": s3.storage_url(prefix)}
    with running_server(tmp_path, "--workers", "1", **env) as server, server.client() as client:
        body = {"model": "Omni-Flash-Ext", "prompt": "rain on a window", "duration": 4}
        task_id = client.post("/v1/videos/generations", json=body).json()["data"][0]["task_id"]
        data = wait_for_task(client, task_id)
        assert data["status"] == "completed", data
        (url,) = data["result"]["videos"][0]["url"]  # type: ignore[index]
        head = httpx.head(url, timeout=10)
        assert head.status_code == 200 and int(head.headers["content-length"]) > 1000
        first = httpx.get(url, headers={"Range": "bytes=0-11"}, timeout=10)
        assert first.status_code == 206 and first.content[4:8] == b"ftyp", "an mp4"
    bucket = S3Storage(s3.bucket, prefix, endpoint_url=s3.endpoint_url)
    try:
        assert [k for k in list(bucket.keys()) if k.startswith("results/")] == [
            f"results/{task_id}.1.mp4"
        ]
    finally:
        bucket.close()
    assert not (server.data_dir / "blobs").exists()


def test_an_unreachable_bucket_answers_503(tmp_path: Path, s3: S3Server) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    store = Store(settings.database_url)
    dead = S3Storage(s3.bucket, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1)
    app = create_app(settings, store=store, storage=dead, start_workers=False)
    try:
        with TestClient(app) as client:
            path = app.state.services.signer.path("results/a.1.mp4", int(time.time()) + 60)
            for method in ("GET", "HEAD"):
                assert client.request(method, path).status_code == 503
            body = client.get(path).json()
            assert body["error"]["type"] == "api_error" and "try again" in body["error"]["message"]
    finally:
        dead.close()
        store.close()
