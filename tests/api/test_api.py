"""The HTTP contract, in process (no workers): shapes, errors, auth, limits, files."""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from omniflash.api.app import create_app
from omniflash.api.files.downloads import byte_range
from omniflash.errors import RangeNotSatisfiable
from omniflash.settings import Settings
from omniflash.store import Store
from tests.money import assert_money

TASK_ID = re.compile(r"^task_[0-9A-HJKMNP-TV-Z]{26}$")


class Api:
    def __init__(self, client: TestClient, store: Store, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.key, self.info = store.keys.create("t", 10_000, 1000, 4)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def submit(self, key: str | None = None, **fields: Any) -> Any:
        body = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4}
        body.update(fields)
        return self.client.post("/v1/videos/generations", json=body, headers=self.headers(key))

    def get(self, path: str, key: str | None = None) -> Any:
        return self.client.get(path, headers=self.headers(key))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    store = Store(settings.database_url)
    with TestClient(create_app(settings, store=store, start_workers=False)) as client:
        yield Api(client, store, settings)
    assert_money(store)


@pytest.fixture
def png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def assert_error(response: Any, status: int, type_: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert set(body["error"]) == {"code", "message", "type"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["error"]["code"] == status and body["error"]["type"] == type_
    assert body["error"]["message"]
    return str(body["error"]["message"])


def test_submit_answer_is_exactly_the_seed_shape(api: Api) -> None:
    response = api.submit()
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"code", "data", "request_id"} and body["code"] == 200
    assert len(body["data"]) == 1 and set(body["data"][0]) == {"status", "task_id"}
    assert body["data"][0]["status"] == "submitted"
    assert TASK_ID.match(body["data"][0]["task_id"])


@pytest.mark.parametrize(
    ("fields", "type_"),
    [
        ({"model": "gpt"}, "invalid_request_error"),
        ({"prompt": " "}, "invalid_request_error"),
        ({"duration": 7}, "invalid_duration"),
        ({"resolution": "8k"}, "invalid_resolution"),
        ({"image_urls": ["https://e.com/1.png", "https://e.com/2.png"]}, "unsupported_image_count"),
        ({"video_urls": ["https://e.com/1.mp4", "https://e.com/2.mp4"]}, "unsupported_video_count"),
    ],
)
def test_validation_errors(api: Api, fields: dict[str, Any], type_: str) -> None:
    assert_error(api.submit(**fields), 400, type_)
    assert api.store.keys.get(api.info.id).balance == 10_000


def test_malformed_json(api: Api) -> None:
    response = api.client.post(
        "/v1/videos/generations", content=b"{not json", headers=api.headers()
    )
    assert "JSON" in assert_error(response, 400, "invalid_request_error")


def test_authentication(api: Api) -> None:
    assert_error(api.client.post("/v1/videos/generations", json={}), 401, "authentication_error")
    assert_error(api.submit(key="of_wrong"), 401, "authentication_error")
    assert_error(api.get("/v1/tasks", key="of_wrong"), 401, "authentication_error")
    response = api.client.get("/v1/tasks", headers={"Authorization": "Basic abc"})
    assert_error(response, 401, "authentication_error")


def test_payment_required(api: Api) -> None:
    poor, _ = api.store.keys.create("poor", 500, 60, 4)
    message = assert_error(api.submit(key=poor), 402, "payment_required")
    assert "1.0 credits" in message


def test_rate_limit_has_retry_after_and_charges_nothing(api: Api) -> None:
    key, info = api.store.keys.create("slow", 10_000, 2, 4)
    assert api.submit(key=key).status_code == 200
    for _ in range(30):  # reads do not count against the submit limit
        assert api.get("/v1/tasks", key=key).status_code == 200
    assert api.submit(key=key).status_code == 200
    response = api.submit(key=key)
    assert_error(response, 429, "rate_limit_error")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert api.store.keys.get(info.id).balance == 10_000 - 2000


def test_every_submit_counts_once_against_rpm_whatever_its_answer(api: Api) -> None:
    """Refused bodies, refused charges and accepted tasks each use one of the minute's
    requests; once they are used up, the 429 comes first, whatever the body."""
    key, info = api.store.keys.create("four", 1000, 4, 4)  # one 4 s 720p task's worth
    headers = api.headers(key)
    bad_json = api.client.post("/v1/videos/generations", content=b"{", headers=headers)
    assert_error(bad_json, 400, "invalid_request_error")
    assert_error(api.submit(key=key, duration=5), 400, "invalid_duration")
    assert api.submit(key=key).status_code == 200
    assert_error(api.submit(key=key), 402, "payment_required")
    assert_error(api.submit(key=key), 429, "rate_limit_error")
    assert_error(api.submit(key=key, duration=5), 429, "rate_limit_error")
    upload = api.client.post(
        "/v1/uploads/images", files={"file": ("a.png", b"png?", "image/png")}, headers=headers
    )
    assert_error(upload, 429, "rate_limit_error")
    assert api.store.keys.get(info.id).balance == 0 == api.store.keys.ledger_sum(info.id)


def test_a_key_over_its_rate_gets_429_before_its_images_are_stored(
    api: Api, png_data_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, _ = api.store.keys.create("two", 10_000, 2, 4)
    storage = api.client.app.state.services.storage  # type: ignore[attr-defined]
    stored: list[str] = []
    put_bytes = storage.put_bytes

    def counted_put_bytes(name: str, *args: Any, **kwargs: Any) -> Any:
        stored.append(name)
        return put_bytes(name, *args, **kwargs)

    monkeypatch.setattr(storage, "put_bytes", counted_put_bytes)
    assert api.submit(key=key, image_urls=[png_data_uri]).status_code == 200
    assert len(stored) == 1  # the first image went to storage
    assert api.submit(key=key).status_code == 200
    assert_error(api.submit(key=key, image_urls=[png_data_uri]), 429, "rate_limit_error")
    assert len(stored) == 1  # the refused one never reached it


def test_a_revoked_key_cannot_submit_even_while_it_is_cached(api: Api) -> None:
    key, info = api.store.keys.create("gone", 10_000, 60, 4)
    assert api.get("/v1/tasks", key=key).status_code == 200  # in the key cache now
    api.store.keys.revoke(key)
    assert_error(api.submit(key=key), 401, "authentication_error")
    assert api.store.keys.ledger_sum(info.id) == 10_000 == api.store.keys.get(info.id).balance


def test_reads_neither_lock_nor_write(api: Api) -> None:
    """A poll takes no write transaction: with the write lock held elsewhere, it still answers."""
    task_id = api.submit().json()["data"][0]["task_id"]
    api.get("/v1/account")  # the key's webhook secret is made on its first view, once
    with api.store.db.write() as conn:  # BEGIN IMMEDIATE: SQLite's one write lock
        conn.exec_driver_sql("SELECT 1")
        for path in (f"/v1/tasks/{task_id}", "/v1/tasks", "/v1/account"):
            assert api.get(path).status_code == 200


def test_concurrency_limit(api: Api) -> None:
    key, _ = api.store.keys.create("one", 10_000, 100, 1)
    assert api.submit(key=key).status_code == 200
    response = api.submit(key=key)
    assert "in flight" in assert_error(response, 429, "rate_limit_error")
    assert int(response.headers["Retry-After"]) >= 1


def test_task_shape_and_isolation(api: Api) -> None:
    task_id = api.submit(resolution="1080p", duration=10).json()["data"][0]["task_id"]
    data = api.get(f"/v1/tasks/{task_id}").json()["data"]
    assert data["id"] == task_id and data["status"] == "pending" and data["progress"] == 0
    assert data["cost"] == 0.4 and data["credits_cost"] == 4.0
    assert isinstance(data["created"], int) and data["estimated_time"] >= 1
    assert data["completed"] is None and "result" not in data
    other, _ = api.store.keys.create("other", 10, 60, 4)
    assert_error(api.get(f"/v1/tasks/{task_id}", key=other), 404, "not_found_error")
    assert_error(api.get("/v1/tasks/task_nope"), 404, "not_found_error")


def test_cancel_refunds_and_conflicts(api: Api) -> None:
    task_id = api.submit().json()["data"][0]["task_id"]
    response = api.client.post(f"/v1/tasks/{task_id}/cancel", headers=api.headers())
    data = response.json()["data"]
    assert (data["status"], data["cost"], data["error"]["code"]) == (
        "cancelled",
        0,
        "task_cancelled",
    )
    assert api.store.keys.get(api.info.id).balance == 10_000
    again = api.client.post(f"/v1/tasks/{task_id}/cancel", headers=api.headers())
    assert_error(again, 409, "conflict_error")


def test_list_paging(api: Api) -> None:
    ids = [api.submit().json()["data"][0]["task_id"] for _ in range(3)]
    first = api.get("/v1/tasks?limit=2").json()
    assert [t["id"] for t in first["data"]] == ids[:0:-1] and first["has_more"]
    second = api.get(f"/v1/tasks?limit=2&after={first['next_after']}").json()
    assert [t["id"] for t in second["data"]] == ids[:1] and not second["has_more"]
    assert_error(api.get("/v1/tasks?limit=0"), 400, "invalid_request_error")


def test_idempotency_key(api: Api) -> None:
    headers = {**api.headers(), "Idempotency-Key": "abc"}
    body = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4}
    first = api.client.post("/v1/videos/generations", json=body, headers=headers)
    second = api.client.post("/v1/videos/generations", json=body, headers=headers)
    assert first.json()["data"] == second.json()["data"]
    assert first.json()["request_id"] != second.json()["request_id"], "each answer its own id"
    assert second.headers["Idempotency-Replayed"] == "true"
    assert "Idempotency-Replayed" not in first.headers
    assert api.store.keys.get(api.info.id).balance == 9000
    other = api.client.post("/v1/videos/generations", json={**body, "duration": 6}, headers=headers)
    assert_error(other, 422, "idempotency_error")


def test_concurrent_requests_with_one_idempotency_key_make_one_task(api: Api) -> None:
    body = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4}
    headers = {**api.headers(), "Idempotency-Key": "same"}
    answers: list[Any] = []

    def post() -> None:
        answers.append(api.client.post("/v1/videos/generations", json=body, headers=headers))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in answers] == [200] * 6
    assert len({r.json()["data"][0]["task_id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotency-Replayed") == "true" for r in answers) == 5
    assert api.store.keys.get(api.info.id).balance == 9000, "charged once"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"Omni-Flash-Ext","prompt":"a cat","duration":' + b"7" * 5000 + b"}",
        b'{"model":"Omni-Flash-Ext","prompt":"a cat","seed":1' + b"0" * 5000 + b"}",
        b'{"model":"Omni-Flash-Ext","prompt":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"model":"Omni-Flash-Ext","prompt":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["huge-duration", "huge-seed", "deep-prompt", "deeper-prompt", "deep-body"],
)
def test_malformed_bodies_are_invalid_requests(api: Api, raw: bytes) -> None:
    headers = {**api.headers(), "Content-Type": "application/json"}
    response = api.client.post("/v1/videos/generations", content=raw, headers=headers)
    assert_error(response, 400, "invalid_request_error")
    assert api.store.keys.get(api.info.id).balance == 10_000
    assert api.submit().status_code == 200, "the server still answers"


def test_inline_images_are_stored_as_blobs_not_in_the_task(api: Api, png_data_uri: str) -> None:
    response = api.submit(image_urls=[png_data_uri])
    task_id = response.json()["data"][0]["task_id"]
    task = api.store.tasks.get(task_id)
    (url,) = task.spec.image_urls
    assert url.startswith("blob:inputs/") and len(task.spec.to_json()) < 1000
    storage = api.client.app.state.services.storage  # type: ignore[attr-defined]
    assert storage.exists(url.removeprefix("blob:"))


def test_failed_submit_releases_idempotency_key(api: Api) -> None:
    poor, _ = api.store.keys.create("poor", 500, 60, 4)
    headers = {"Authorization": f"Bearer {poor}", "Idempotency-Key": "k1"}
    body = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 4}
    assert api.client.post("/v1/videos/generations", json=body, headers=headers).status_code == 402
    api.store.keys.topup(poor, 1000)
    assert api.client.post("/v1/videos/generations", json=body, headers=headers).status_code == 200


def _complete(api: Api, task_id: str, ttl_s: float, content: bytes = b"mp4") -> str:
    claim = api.store.tasks.claim("test", 30)
    assert claim is not None and claim.task.id == task_id
    src = api.settings.data_dir / "src.mp4"
    src.write_bytes(content)
    api.client.app.state.services.storage.put(f"results/{task_id}.1.mp4", src)  # type: ignore[attr-defined]
    api.store.tasks.complete(
        task_id, claim.epoch, result_key=f"results/{task_id}.1.mp4", ttl_s=ttl_s
    )
    data: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()["data"]
    return str(data["result"]["videos"][0]["url"][0])


def test_signed_file_urls(api: Api) -> None:
    task_id = api.submit().json()["data"][0]["task_id"]
    url = _complete(api, task_id, 3600, b"video-bytes")
    data = api.get(f"/v1/tasks/{task_id}").json()["data"]
    assert data["status"] == "completed" and data["progress"] == 100
    assert 0 <= data["result"]["videos"][0]["expires_at"] - (data["completed"] + 3600) <= 1
    assert data["actual_time"] == data["completed"] - data["created"]
    path = url.split("testserver", 1)[1]
    download = api.client.get(path)  # no API key: the signature is the permission
    assert download.status_code == 200 and download.content == b"video-bytes"
    assert download.headers["content-type"] == "video/mp4"
    assert_error(
        api.client.get(path[:-1] + ("0" if path[-1] != "0" else "1")), 403, "permission_error"
    )
    assert_error(api.client.get(path.replace("expires=", "expires=9")), 403, "permission_error")


def test_file_urls_answer_head_and_ranges(api: Api) -> None:
    task_id = api.submit().json()["data"][0]["task_id"]
    path = _complete(api, task_id, 3600, b"0123456789").split("testserver", 1)[1]
    head = api.client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "10" and head.headers["content-type"] == "video/mp4"
    assert head.headers["accept-ranges"] == "bytes"
    part = api.client.get(path, headers={"Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == b"2345"
    assert part.headers["content-range"] == "bytes 2-5/10"
    assert api.client.get(path, headers={"Range": "bytes=20-"}).status_code == 416
    assert api.client.head(path.replace("sig=", "sig=0")).status_code == 403


@pytest.mark.parametrize(
    ("header", "span"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=10-19", (10, 19)),
        ("bytes=90-", (90, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=-5", (95, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=5-2", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=-", None),
        ("bytes=100-", "416"),
        ("bytes=-0", "416"),
    ],
)
def test_byte_range(header: str | None, span: tuple[int, int] | str | None) -> None:
    if span == "416":
        with pytest.raises(RangeNotSatisfiable):
            byte_range(header, 100)
    else:
        assert byte_range(header, 100) == span


def test_expired_url_is_refused(api: Api) -> None:
    task_id = api.submit().json()["data"][0]["task_id"]
    url = _complete(api, task_id, -1)
    assert_error(api.client.get(url.split("testserver", 1)[1]), 403, "permission_error")


def test_misc_endpoints(api: Api) -> None:
    assert api.client.get("/healthz").json()["status"] == "ok"
    assert api.client.get("/docs").status_code == 200
    assert "/v1/videos/generations" in api.client.get("/openapi.json").json()["paths"]
    assert_error(api.client.get("/v2/nothing"), 404, "not_found_error")
    account = api.get("/v1/account").json()["data"]
    assert account["balance"] == 10.0 and account["rpm"] == 1000
