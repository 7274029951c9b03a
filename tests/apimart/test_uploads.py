"""Image uploads: the endpoint, its limits, and its URLs as inputs without a network fetch."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from omniflash.api.app import create_app
from omniflash.image_types import sniff_image
from omniflash.settings import Settings
from omniflash.store import Store
from tests.conftest import running_server, wait_for_task

pytestmark = pytest.mark.timeout(90)


def image_bytes(fmt: str, color: tuple[int, int, int] = (220, 20, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format=fmt)
    return buffer.getvalue()


class Api:
    def __init__(self, client: TestClient, store: Store) -> None:
        self.client = client
        self.store = store
        self.key, self.info = store.keys.create("t", 100_000, 1000, 10)
        self.auth = {"Authorization": f"Bearer {self.key}"}

    def upload(self, data: bytes, name: str = "photo.png", mime: str = "image/png") -> Any:
        return self.client.post(
            "/v1/uploads/images", files={"file": (name, data, mime)}, headers=self.auth
        )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path / "data", workers=0, max_upload_bytes=50_000, upload_ttl_s=600
    )
    store = Store(settings.database_url)
    with TestClient(create_app(settings, store=store, start_workers=False)) as client:
        yield Api(client, store)


@pytest.mark.parametrize(
    ("fmt", "mime", "ext"),
    [
        ("PNG", "image/png", "png"),
        ("JPEG", "image/jpeg", "jpg"),
        ("GIF", "image/gif", "gif"),
        ("WEBP", "image/webp", "webp"),
    ],
)
def test_types_are_judged_from_the_bytes(fmt: str, mime: str, ext: str) -> None:
    assert sniff_image(image_bytes(fmt)[:16]) == (mime, ext)


def test_upload_answers_a_signed_url_that_serves_the_image_without_a_key(api: Api) -> None:
    data = image_bytes("JPEG")
    # Named and labelled as a PNG: the bytes say JPEG, and they win.
    response = api.upload(data, name="../my photo.png", mime="image/png")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {
        "url",
        "filename",
        "content_type",
        "bytes",
        "created_at",
        "expires_at",
        "request_id",
    }
    assert body["content_type"] == "image/jpeg" and body["filename"] == "my-photo.jpg"
    assert body["bytes"] == len(data) and body["expires_at"] - body["created_at"] == 600
    assert "sig=" in body["url"] and "/v1/files/uploads/" in body["url"]
    served = api.client.get(body["url"])
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == "image/jpeg"
    tampered = api.client.get(body["url"].replace("sig=", "sig=0"))
    assert tampered.status_code == 403


def test_upload_refusals(api: Api) -> None:
    text = api.upload(b"just some text, not an image", name="x.png")
    assert text.status_code == 400 and text.json()["error"]["type"] == "invalid_request_error"
    big = api.upload(b"\x89PNG\r\n\x1a\n" + b"\0" * 60_000)
    assert big.status_code == 413
    assert set(big.json()["error"]) == {"code", "message", "type"} and big.json()["request_id"]
    anonymous = api.client.post("/v1/uploads/images", files={"file": ("a.png", b"x")})
    assert anonymous.status_code == 401
    no_file = api.client.post("/v1/uploads/images", data={"other": "1"}, headers=api.auth)
    assert no_file.status_code == 400
    as_json = api.client.post("/v1/uploads/images", json={"file": "x"}, headers=api.auth)
    assert as_json.status_code == 400


def test_an_uploaded_url_in_image_urls_becomes_the_task_s_own_blob(api: Api) -> None:
    url = api.upload(image_bytes("PNG")).json()["url"]
    body = {"model": "Omni-Flash-Ext", "prompt": "p", "duration": 4, "image_urls": [url]}
    response = api.client.post("/v1/videos/generations", json=body, headers=api.auth)
    assert response.status_code == 200, response.text
    task = api.store.tasks.get(response.json()["data"][0]["task_id"])
    (stored,) = task.spec.image_urls
    assert stored.startswith("blob:inputs/") and stored.endswith("/0.png")
    # Another server's URL of the same shape (bad signature) stays a URL, fetched as any.
    foreign = url.replace("sig=", "sig=f")
    body["image_urls"] = [foreign]
    other = api.client.post("/v1/videos/generations", json=body, headers=api.auth).json()
    assert api.store.tasks.get(other["data"][0]["task_id"]).spec.image_urls == (foreign,)


def test_an_expired_upload_url_is_refused_at_submit(api: Api) -> None:
    services = api.client.app.state.services  # type: ignore[attr-defined]
    services.storage.put_bytes("uploads/old.png", image_bytes("PNG"), "image/png")
    expired = int(time.time()) - 10
    url = "http://testserver" + services.signer.path("uploads/old.png", expired)
    body = {"model": "Omni-Flash-Ext", "prompt": "p", "image_urls": [url]}
    before = api.store.keys.get(api.info.id).balance
    response = api.client.post("/v1/videos/generations", json=body, headers=api.auth)
    assert response.status_code == 400 and "expired" in response.json()["error"]["message"]
    assert api.store.keys.get(api.info.id).balance == before


def test_frame_mode_from_an_upload_on_a_server_that_refuses_private_addresses(
    tmp_path: Path,
) -> None:
    with (
        running_server(tmp_path, "--workers", "1", OMNIFLASH_ALLOW_PRIVATE_URLS="0") as server,
        server.client() as client,
    ):
        png = image_bytes("PNG")
        upload = client.post("/v1/uploads/images", files={"file": ("red.png", png, "image/png")})
        assert upload.status_code == 200, upload.text
        url = upload.json()["url"]
        assert url.startswith("http://127.0.0.1:"), "a private address the fetcher refuses"
        body = {"model": "Omni-Flash-Ext", "prompt": "zoom into the red", "duration": 4}
        direct = client.post("/v1/videos/generations", json={**body, "image_urls": [url]})
        task_id = direct.json()["data"][0]["task_id"]
        data = wait_for_task(client, task_id, timeout=60)
        assert data["status"] == "completed", data
        thumb = client.get(f"/v1/videos/{task_id}/content", params={"variant": "thumbnail"})
        assert thumb.status_code == 200
        rgb = Image.open(io.BytesIO(thumb.content)).convert("RGB").resize((1, 1)).getpixel((0, 0))
        assert isinstance(rgb, tuple)
        r, g, b = rgb[:3]
        assert r > 150 and g < 90 and b < 90, (r, g, b)
        # The same image by a URL of the server itself, not an upload: refused as private.
        plain = server.url + "/v1/files/results/nothing.png?expires=1&sig=0"
        other = client.post("/v1/videos/generations", json={**body, "image_urls": [plain]})
        refused = wait_for_task(client, other.json()["data"][0]["task_id"], timeout=60)
        assert refused["status"] == "failed"
        assert "is not public" in str(refused["error"])
        assert httpx.get(url).status_code == 200


def test_a_remote_worker_gets_an_uploaded_image_from_the_api_not_its_url(api: Api) -> None:
    data = image_bytes("PNG", (10, 200, 30))
    url = api.upload(data).json()["url"]
    body = {"model": "Omni-Flash-Ext", "prompt": "p", "duration": 4, "image_urls": [url]}
    task_id = api.client.post("/v1/videos/generations", json=body, headers=api.auth).json()["data"][
        0
    ]["task_id"]
    token, _ = api.store.workers.create("gpu-1")
    worker = {"Authorization": f"Bearer {token}"}
    claimed = api.client.post("/worker/v1/claim", json={"owner": "w-0"}, headers=worker)
    lease = claimed.json()["lease"]
    assert lease["spec"]["image_urls"][0].startswith("blob:inputs/")
    assert url not in claimed.text, "the worker is never told the upload's URL"
    response = api.client.get(
        f"/worker/v1/tasks/{task_id}/inputs/0", params={"epoch": lease["epoch"]}, headers=worker
    )
    assert response.status_code == 200 and response.content == data
