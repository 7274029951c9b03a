"""Discovery: models, the model's documentation and JSON Schema, as APIMart's client reads them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from omniflash.api.app import create_app
from omniflash.contract import parse_generation_request
from omniflash.pricing import Pricing
from omniflash.settings import Settings
from omniflash.store import Store

pytestmark = pytest.mark.timeout(60)

# The five scenario bodies of the seed's "Use Cases", without `model`.
SCENARIOS: list[dict[str, Any]] = [
    {
        "prompt": "a beautiful sunset over the ocean with seagulls flying",
        "duration": 6,
        "resolution": "720p",
        "aspect_ratio": "16:9",
    },
    {
        "prompt": "make the character smile and slowly turn around, cinematic camera motion",
        "duration": 6,
        "resolution": "1080p",
        "aspect_ratio": "9:16",
        "image_urls": ["https://example.com/character.jpg"],
    },
    {
        "prompt": "a creative scene combining these elements with smooth camera motion",
        "duration": 10,
        "resolution": "1080p",
        "aspect_ratio": "9:16",
        "image_urls": [
            "https://example.com/scene.jpg",
            "https://example.com/character.jpg",
            "https://example.com/product.jpg",
        ],
    },
    {
        "prompt": "close-up of a hummingbird hovering in front of a red flower",
        "duration": 4,
        "resolution": "4k",
        "aspect_ratio": "16:9",
    },
    {
        "prompt": "the same scene but at night with neon lights",
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "video_urls": ["https://example.com/reference.mp4"],
    },
]
BAD: list[dict[str, Any]] = [
    {**SCENARIOS[0], "duration": 5},
    {**SCENARIOS[0], "resolution": "480p"},
    {**SCENARIOS[0], "aspect_ratio": "2:1"},
    {**SCENARIOS[0], "prompt": ""},
    {"duration": 6},
    {**SCENARIOS[0], "image_urls": ["a", "b", "c", "d"]},
    {**SCENARIOS[0], "image_urls": ["ftp://example.com/x.png"]},
    {**SCENARIOS[0], "seed": -1},
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        workers=0,
        public_url="https://video.example.com",
        pricing=Pricing(per_second={"720p": 0.25, "1080p": 0.5, "4k": 1.0}),
        upload_ttl_s=3600,
    )
    store = Store(settings.database_url)
    with TestClient(create_app(settings, store=store, start_workers=False)) as c:
        yield c


def test_models_list_is_what_apimart_and_openai_clients_read(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and len(body["data"]) == 1
    model = body["data"][0]
    assert model["id"] == "Omni-Flash-Ext" and model["object"] == "model"
    assert model["type"] == "video" and model["owned_by"] and isinstance(model["created"], int)
    assert client.get("/v1/models/Omni-Flash-Ext").json()["id"] == "Omni-Flash-Ext"
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_model_docs_come_from_the_running_configuration(client: TestClient) -> None:
    response = client.get("/v1/model-docs", params={"model": "Omni-Flash-Ext"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "model.documentation" and body["model"] == "Omni-Flash-Ext"
    assert body["stale"] is False and body["cache_ttl_seconds"] > 0
    assert isinstance(body["fetched_at"], int)
    markdown = body["markdown"]
    for needed in ("4, 6, 8, 10", "720p, 1080p, 4k", "21:9", "`reference`", "3840×2160"):
        assert needed in markdown, needed
    assert "| 1080p | 0.5 |" in markdown, "the configured price, not the default"
    assert "lasting 1 h" in markdown and "Result URLs last 72 h" in markdown
    assert body["doc_url"].startswith("https://video.example.com/")
    md = client.get(body["markdown_url"].removeprefix("https://video.example.com"))
    assert md.status_code == 200 and md.text == markdown
    assert md.headers["content-type"].startswith("text/markdown")
    page = client.get(body["doc_url"].removeprefix("https://video.example.com"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Omni-Flash-Ext" in page.text and "<script" not in page.text
    for url in ("/v1/model-docs?model=sora-2", "/v1/model-docs/sora-2.md", "/v1/model-docs/x"):
        missing = client.get(url)
        assert missing.status_code == 404 and set(missing.json()["error"]) == {
            "code",
            "message",
            "type",
        }


def test_model_schema_validates_the_seed_scenarios_and_refuses_bad_bodies(
    client: TestClient,
) -> None:
    body = client.get(
        "/v1/model-schema", params={"model": "Omni-Flash-Ext", "operation": "video_generation"}
    ).json()
    assert body["model"] == "Omni-Flash-Ext" and body["operation"] == "video_generation"
    assert body["endpoint"] == "/v1/videos/generations"
    assert {"schema_version", "idempotency", "response_contract"} <= set(body)
    assert body["idempotency"]["max_length"] == 191
    schema = body["input_schema"]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "model" not in schema["properties"] and schema["required"] == ["prompt"]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for scenario in SCENARIOS:
        validator.validate(scenario)
        parse_generation_request({"model": "Omni-Flash-Ext", **scenario})
    for bad in BAD:
        assert not validator.is_valid(bad), bad


def test_model_schema_refuses_image_generation_and_unknown_models(client: TestClient) -> None:
    image = client.get("/v1/model-schema?model=Omni-Flash-Ext&operation=image_generation")
    assert image.status_code == 400
    assert image.json()["error"]["type"] == "invalid_request_error"
    assert re.search(r"video", image.json()["error"]["message"])
    assert client.get("/v1/model-schema?model=veo-3").status_code == 404


def test_discovery_is_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/models", "/v1/models/{model_id}", "/v1/model-docs", "/v1/model-schema"):
        assert "get" in paths[path] and "security" not in paths[path]["get"]
    assert "404" in paths["/v1/model-schema"]["get"]["responses"]
    assert "400" in paths["/v1/model-schema"]["get"]["responses"]
    upload = paths["/v1/uploads/images"]["post"]
    assert {"400", "401", "413", "429"} <= set(upload["responses"]) and upload["security"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
