"""APIMart's answers: response version 2026-07-27, request ids, replays, languages, integers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from omniflash.api.app import create_app
from omniflash.settings import Settings
from omniflash.store import Store

pytestmark = pytest.mark.timeout(60)

VERSION = "X-APIMart-Response-Version"
BODY = {"model": "Omni-Flash-Ext", "prompt": "a cat", "duration": 10, "resolution": "1080p"}
TASK_ID = re.compile(r"^task_[0-9A-Z]{26}$")


class Api:
    def __init__(self, client: TestClient, store: Store) -> None:
        self.client = client
        self.store = store
        self.key, self.info = store.keys.create("t", 100_000, 1000, 10)
        self.auth = {"Authorization": f"Bearer {self.key}"}

    def submit(self, body: dict[str, Any] | None = None, **headers: str) -> Any:
        return self.client.post(
            "/v1/videos/generations", json=body or BODY, headers={**self.auth, **headers}
        )


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    store = Store(settings.database_url)
    with TestClient(create_app(settings, store=store, start_workers=False)) as client:
        yield Api(client, store)


def test_version_2026_07_27_answers_the_task_object_and_echoes_the_header(api: Api) -> None:
    for asked in ("2026-07-27", "2027-01-01"):
        response = api.submit(**{VERSION: asked})
        assert response.status_code == 200, response.text
        assert response.headers[VERSION] == "2026-07-27"
        body = response.json()
        assert set(body) == {"code", "data", "request_id"} and body["code"] == 200
        data = body["data"]
        assert isinstance(data, dict) and TASK_ID.match(data["id"])
        assert data["object"] == "generation.task" and data["status"] == "pending"
        assert data["credits_cost"] == 4 and isinstance(data["credits_cost"], int)
        assert '"credits_cost":4,' in response.text
        assert body["request_id"] == response.headers["x-request-id"]
        assert api.client.get(f"/v1/tasks/{data['id']}", headers=api.auth).status_code == 200


def test_no_header_or_an_earlier_date_keeps_the_seed_shape(api: Api) -> None:
    for headers in ({}, {VERSION: "2025-12-31"}, {VERSION: " "}):
        response = api.submit(**headers)
        assert response.status_code == 200
        assert VERSION not in response.headers
        body = response.json()
        assert set(body) == {"code", "data", "request_id"}
        assert len(body["data"]) == 1 and set(body["data"][0]) == {"status", "task_id"}
        assert body["data"][0]["status"] == "submitted"


@pytest.mark.parametrize("bad", ["latest", "2026-7-27", "2026-13-01", "v2"])
def test_a_malformed_version_is_refused_naming_the_supported_ones(api: Api, bad: str) -> None:
    before = api.store.keys.get(api.info.id).balance
    response = api.submit(**{VERSION: bad})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "2026-07-27" in error["message"]
    assert api.store.keys.get(api.info.id).balance == before, "nothing charged"


def test_replays_say_so_in_both_versions(api: Api) -> None:
    for version in ({}, {VERSION: "2026-07-27"}):
        key = "k-" + str(len(version)) + "!~"
        first = api.submit(**version, **{"Idempotency-Key": key})
        again = api.submit(**version, **{"Idempotency-Key": key})
        assert "Idempotency-Replayed" not in first.headers
        assert again.headers["Idempotency-Replayed"] == "true"
        assert first.json()["data"] == again.json()["data"]


@pytest.mark.parametrize(
    ("key", "ok"),
    [("a", True), ("x" * 191, True), ("x" * 192, False), ("has space", False), ("tab\tkey", False)],
)
def test_idempotency_keys_are_1_to_191_visible_ascii(api: Api, key: str, ok: bool) -> None:
    response = api.client.post(
        "/v1/videos/generations",
        json=BODY,
        headers={**api.auth, "Idempotency-Key": key},
    )
    assert response.status_code == (200 if ok else 400), response.text
    if not ok:
        assert "191 visible ASCII" in response.json()["error"]["message"]


def test_every_omni_flash_ext_answer_carries_its_request_id(api: Api) -> None:
    task = api.submit().json()["data"][0]["task_id"]
    answers = [
        api.client.get(f"/v1/tasks/{task}", headers=api.auth),
        api.client.get("/v1/tasks", headers=api.auth),
        api.client.get("/v1/account", headers=api.auth),
        api.client.post(f"/v1/tasks/{task}/cancel", headers=api.auth),
        api.client.get("/v1/tasks/task_nope", headers=api.auth),
        api.client.get("/v1/account"),
        api.client.post("/v1/account/webhook-secret", headers=api.auth),
        api.client.get(f"/v1/tasks/{task}", headers={**api.auth, "X-Request-Id": "mine-1"}),
    ]
    for response in answers:
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert answers[-1].json()["request_id"] == "mine-1"
    assert len({r.json()["request_id"] for r in answers}) == len(answers)


def test_credits_and_cost_are_integers_when_whole(api: Api) -> None:
    whole = api.submit().json()["data"][0]["task_id"]
    half = api.submit({**BODY, "resolution": "720p", "duration": 6}).json()["data"][0]["task_id"]
    text = api.client.get(f"/v1/tasks/{whole}", headers=api.auth).text
    assert '"credits_cost":4,' in text and '"cost":0.4,' in text
    data = api.client.get(f"/v1/tasks/{half}", headers=api.auth).json()["data"]
    assert data["credits_cost"] == 1.5 and isinstance(data["credits_cost"], float)
    balance = api.client.get("/v1/account", headers=api.auth).json()["data"]["balance"]
    assert balance == 94.5
    cancelled = api.client.post(f"/v1/tasks/{whole}/cancel", headers=api.auth)
    assert '"cost":0,' in cancelled.text and '"credits_cost":0,' in cancelled.text


def test_language_localises_standard_messages_and_the_failure_prefix(api: Api) -> None:
    task = api.submit().json()["data"][0]["task_id"]
    claim = api.store.tasks.claim("w", 30)
    assert claim is not None and claim.task.id == task
    api.store.tasks.fail(
        task, claim.epoch, "image_urls[0] could not be fetched", retry=False, max_attempts=3
    )
    url = f"/v1/tasks/{task}"
    plain = api.client.get(url, headers=api.auth).json()["data"]
    assert plain["error"]["message"] == "image_urls[0] could not be fetched"
    messages = {}
    for lang in ("zh", "en", "ko", "ja"):
        data = api.client.get(url, params={"language": lang}, headers=api.auth).json()["data"]
        assert data["error"]["message"].endswith("image_urls[0] could not be fetched")
        assert {k: v for k, v in data.items() if k != "error"} == {
            k: v for k, v in plain.items() if k != "error"
        }
        messages[lang] = data["error"]["message"]
    assert messages["zh"].startswith("生成失败") and messages["en"].startswith("Generation failed")
    assert messages["ko"].startswith("생성 실패") and messages["ja"].startswith("生成に失敗")
    missing = api.client.get("/v1/tasks/task_nope?language=zh", headers=api.auth)
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "任务不存在"
    anonymous = api.client.get(f"{url}?language=ja")
    assert anonymous.status_code == 401 and "API キー" in anonymous.json()["error"]["message"]
    bad = api.client.get(url, params={"language": "fr"}, headers=api.auth)
    assert bad.status_code == 400 and "zh, en, ko, ja" in bad.json()["error"]["message"]
