"""The one exception tree: every class has a status and a type, every status the API
documents has a class, and each dialect renders every class once, in its own shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from omniflash.api.app import create_app
from omniflash.api.mcp.server import tool_error
from omniflash.api.omni.errors import seed_error
from omniflash.api.openai.shapes import openai_error
from omniflash.errors import (
    InvalidParam,
    MethodNotAllowed,
    NotFound,
    OmniflashError,
    RangeNotSatisfiable,
    RateLimited,
    UploadTooLarge,
    api_errors,
    for_status,
)
from omniflash.settings import Settings
from omniflash.store import Store


def _instance(cls: type[OmniflashError]) -> OmniflashError:
    return cls("at fault", "field") if issubclass(cls, InvalidParam) else cls()  # type: ignore[call-arg]


def test_every_class_of_the_tree_has_a_status_and_a_type() -> None:
    classes = api_errors()
    assert classes[0] is OmniflashError
    assert {UploadTooLarge, RangeNotSatisfiable, InvalidParam, MethodNotAllowed} <= set(classes)
    for cls in classes:
        assert isinstance(cls.status, int) and 400 <= cls.status <= 599, cls
        assert isinstance(cls.type, str) and cls.type, cls
        assert isinstance(cls.default_message, str) and cls.default_message, cls


def test_every_documented_status_has_a_class(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    app = create_app(settings, store=Store(settings.database_url), start_workers=False)
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
    documented = {
        int(status)
        for operations in document["paths"].values()
        for operation in operations.values()
        for status in operation.get("responses", {})
        if status.isdigit() and int(status) >= 400
    }
    assert documented
    statuses = {cls.status for cls in api_errors()}
    assert documented <= statuses, documented - statuses


@pytest.mark.parametrize("cls", api_errors(), ids=lambda cls: cls.__name__)
def test_each_dialect_renders_every_class(cls: type[OmniflashError]) -> None:
    exc = _instance(cls)
    seed = seed_error(exc)
    assert seed.status_code == cls.status
    # The seed's envelope, and the field at fault where one is (APIMart's clients read it).
    param = {"param": exc.param} if isinstance(exc, InvalidParam) else {}
    assert json.loads(seed.body)["error"] == {
        "code": cls.status,
        "message": exc.message,
        "type": cls.type,
        **param,
    }
    openai = openai_error(exc)
    assert openai.status_code == cls.status
    body = json.loads(openai.body)["error"]
    assert (body["message"], body["type"]) == (exc.message, cls.type)
    assert body["param"] == ("field" if isinstance(exc, InvalidParam) else None)
    tool = tool_error(exc)
    assert tool.is_error
    assert tool.structured_content == {
        "error": {"code": cls.status, "type": cls.type, "message": exc.message}
    }


def test_headers_travel_with_the_error_in_every_dialect() -> None:
    limited = RateLimited(retry_after=7)
    assert seed_error(limited).headers["retry-after"] == "7"
    assert openai_error(limited).headers["retry-after"] == "7"
    outside = RangeNotSatisfiable(size=10)
    assert seed_error(outside).headers["content-range"] == "bytes */10"


def test_a_status_from_outside_the_tree_finds_its_class() -> None:
    assert type(for_status(404, "x")) is NotFound
    assert type(for_status(405, "x")) is MethodNotAllowed
    odd = for_status(418, "teapot")
    assert (odd.status, odd.type, odd.message) == (418, "invalid_request_error", "teapot")
