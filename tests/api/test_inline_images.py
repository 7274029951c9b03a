"""Inline images held to the upload limit at submit, and served blobs that are never sniffed.

Each dialect (Omni-Flash-Ext, OpenAI videos, MCP's generate_video) refuses a ``data:``
image past ``max_upload_bytes`` with 413 before anything is charged or stored, on
SQLite and PostgreSQL; one of exactly the limit is taken.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from omniflash.api.app import create_app
from omniflash.api.deps import Services
from omniflash.settings import Settings
from omniflash.store import Store
from tests.plain_reads import key_of

pytestmark = pytest.mark.timeout(90)

LIMIT = 64 * 1024
PNG = b"\x89PNG\r\n\x1a\n"


class Api:
    def __init__(self, client: TestClient, store: Store, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.key, self.info = store.keys.create("t", 100_000, 1000, 10)
        self.auth = {"Authorization": f"Bearer {self.key}"}

    @property
    def services(self) -> Services:
        services: Services = self.client.app.state.services  # type: ignore[attr-defined]
        return services

    def balance(self) -> int:
        key = key_of(self.store, self.key)
        assert key is not None
        return key.balance

    def stored(self) -> list[Path]:
        return [p for p in self.settings.blobs_dir.rglob("*") if p.is_file()]


@pytest.fixture
def api(tmp_path: Path, store: Store) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=0,
        max_upload_bytes=LIMIT,
    )
    with TestClient(create_app(settings, store=store, start_workers=False)) as client:
        yield Api(client, store, settings)


def data_uri(size: int) -> str:
    return "data:image/png;base64," + base64.b64encode(PNG + b"\0" * (size - len(PNG))).decode()


def submit(api: Api, dialect: str, uri: str) -> tuple[int, dict[str, Any]]:
    """Submit ``uri`` as the one image in ``dialect``: the status and the error object."""
    if dialect == "omni-flash-ext":
        body = {"model": "Omni-Flash-Ext", "prompt": "p", "duration": 4, "image_urls": [uri]}
        answer = api.client.post("/v1/videos/generations", json=body, headers=api.auth)
        return answer.status_code, answer.json().get("error", {})
    if dialect == "openai":
        body = {"prompt": "p", "seconds": "4", "input_reference": uri}
        answer = api.client.post("/v1/videos", json=body, headers=api.auth)
        return answer.status_code, answer.json().get("error", {})
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "generate_video",
            "arguments": {
                "model": "Omni-Flash-Ext",
                "input": {"prompt": "p", "duration": 4, "image_urls": [uri]},
                "idempotency_key": f"inline-{time.time_ns()}",
            },
        },
    }
    headers = {**api.auth, "Accept": "application/json, text/event-stream"}
    answer = api.client.post("/mcp", json=call, headers=headers)
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    error = result["structuredContent"].get("error", {})
    return (error.get("code", 200) if result.get("isError") else 200), error


@pytest.mark.parametrize("dialect", ["omni-flash-ext", "openai", "mcp"])
def test_an_inline_image_past_the_upload_limit_is_refused_before_the_charge(
    api: Api, dialect: str
) -> None:
    before = api.balance()
    status, error = submit(api, dialect, data_uri(LIMIT + 1))
    assert status == 413, error
    assert "inline image is larger than" in error["message"]
    assert api.balance() == before and api.store.keys.ledger_sum(api.info.id) == before
    assert api.stored() == []
    status, error = submit(api, dialect, data_uri(LIMIT))
    assert status == 200, error
    assert api.balance() < before and len(api.stored()) == 1


def test_served_uploads_and_results_are_never_sniffed(api: Api) -> None:
    polyglot = b"GIF89a/*\x00\x00<html><script>alert(document.domain)</script></html>*/"
    upload = api.client.post(
        "/v1/uploads/images",
        files={"file": ("page.html", polyglot, "text/html")},
        headers=api.auth,
    )
    assert upload.status_code == 200, upload.text
    served = api.client.get(upload.json()["url"])
    assert served.status_code == 200 and served.content == polyglot
    assert served.headers["content-type"] == "image/gif"
    assert served.headers["x-content-type-options"] == "nosniff"
    signer, storage = api.services.signer, api.services.storage
    storage.put_bytes("results/t1/0.mp4", b"\0\0\0\x18ftypmp42" + b"\0" * 100, "video/mp4")
    path = signer.path("results/t1/0.mp4", int(time.time()) + 600)
    for headers in ({}, {"Range": "bytes=0-9"}):
        answer = api.client.get(path, headers=headers)
        assert answer.status_code in (200, 206)
        assert answer.headers["x-content-type-options"] == "nosniff", headers
    assert api.client.head(path).headers["x-content-type-options"] == "nosniff"
