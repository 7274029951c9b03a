"""``/docs`` and ``/redoc`` offline, and the OpenAPI document checked against the routes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from omniflash.api.app import create_app
from omniflash.api.docs.request_schema import request_json_schema
from omniflash.settings import Settings
from omniflash.store import Store

pytestmark = pytest.mark.timeout(60)


class Api:
    def __init__(self, client: TestClient, store: Store) -> None:
        self.client = client
        self.store = store
        self.key, self.info = store.keys.create("docs", 100_000, 10_000, 10)
        self.auth = {"Authorization": f"Bearer {self.key}"}
        self.document: dict[str, Any] = client.get("/openapi.json").json()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(data_dir=tmp_path / "data", workers=0)
    store = Store(settings.database_url)
    with TestClient(create_app(settings, store=store, start_workers=False)) as client:
        yield Api(client, store)


def test_docs_pages_load_their_assets_from_this_server(api: Api) -> None:
    for page, assets in (
        ("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]),
        ("/redoc", ["redoc.standalone.js"]),
    ):
        html = api.client.get(page).text
        external = re.findall(r"""(?:src|href)=["']?(https?://[^"' >]+)""", html)
        assert external == [], f"{page} loads {external}"
        for asset in assets:
            assert f"/docs/assets/{asset}" in html
            response = api.client.get(f"/docs/assets/{asset}")
            assert response.status_code == 200 and len(response.content) > 10_000
    assert "fonts.googleapis" not in api.client.get("/redoc").text


def test_document_is_valid_openapi_with_the_contract_schema(api: Api) -> None:
    validate(api.document)
    text = json.dumps(api.document)
    assert "HTTPValidationError" not in text
    schemas = api.document["components"]["schemas"]
    expected = request_json_schema()
    expected.pop("$schema")
    assert schemas["GenerationRequest"] == expected
    submit = api.document["paths"]["/v1/videos/generations"]["post"]
    body = submit["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/GenerationRequest"}
    create = api.document["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert set(create) == {"multipart/form-data", "application/json"}
    validator = jsonschema.Draft202012Validator(request_json_schema())
    for example in expected["examples"]:
        validator.validate(example)
    assert api.document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Your API key",
    }


def test_document_lists_exactly_the_routes(api: Api) -> None:
    routes = {
        (context.path_format, method.lower())
        for context in iter_route_contexts(api.client.app.routes)  # type: ignore[attr-defined]
        if isinstance(context.original_route, APIRoute) and context.include_in_schema
        for method in context.methods or ()
    }
    documented = {(path, method) for path, ops in api.document["paths"].items() for method in ops}
    assert documented == routes
    secured = 0
    for path, method in documented:
        # Whatever answers 401 without a key must say so, and name the Bearer scheme.
        url = re.sub(r"\{[^}]+\}", "probe", path)
        anonymous = api.client.request(method.upper(), url)
        operation = api.document["paths"][path][method]
        authenticated = anonymous.status_code == 401
        assert ("security" in operation) == authenticated, (path, method)
        if authenticated:
            secured += 1
            assert {"401", "429", "500"} <= set(operation["responses"]), (path, method)
    assert secured >= 12  # the two dialects and the account


def _probe(api: Api) -> list[tuple[str, str, int, dict[str, Any]]]:
    """Real requests that fail, one per documented error we can provoke cheaply."""
    c, auth = api.client, api.auth
    poor, _ = api.store.keys.create("poor", 0, 100, 4)
    body = {"model": "Omni-Flash-Ext", "prompt": "p", "duration": 4}
    task = c.post("/v1/videos/generations", json=body, headers=auth).json()["data"][0]["task_id"]
    video = c.post("/v1/videos", json={"prompt": "v"}, headers=auth).json()["id"]
    c.post(f"/v1/tasks/{task}/cancel", headers=auth)
    idem = {**auth, "Idempotency-Key": "k1"}
    c.post("/v1/videos/generations", json=body, headers=idem)
    calls: list[tuple[str, str, Any, dict[str, Any]]] = [
        ("post", "/v1/videos/generations", {"json": body}, {}),
        ("post", "/v1/videos/generations", {"json": {**body, "duration": 5}}, auth),
        ("post", "/v1/videos/generations", {"json": body}, {"Authorization": f"Bearer {poor}"}),
        ("post", "/v1/videos/generations", {"json": {**body, "prompt": "q"}}, idem),
        ("get", "/v1/tasks/{task_id}", {"url": "/v1/tasks/task_nope"}, auth),
        ("post", "/v1/tasks/{task_id}/cancel", {"url": f"/v1/tasks/{task}/cancel"}, auth),
        ("get", "/v1/tasks", {"params": {"limit": 0}}, auth),
        ("get", "/v1/account", {}, {}),
        ("post", "/v1/account/webhook-secret", {}, {}),
        ("get", "/v1/files/{blob_key}", {"url": "/v1/files/results/x.mp4?expires=1&sig=0"}, {}),
        ("post", "/v1/videos", {"json": {"prompt": "x", "seconds": "12"}}, auth),
        ("get", "/v1/videos", {"params": {"limit": 0}}, auth),
        ("get", "/v1/videos/{video_id}", {"url": "/v1/videos/task_nope"}, auth),
        ("delete", "/v1/videos/{video_id}", {"url": "/v1/videos/task_nope"}, auth),
        ("get", "/v1/videos/{video_id}/content", {"url": f"/v1/videos/{video}/content"}, auth),
        (
            "get",
            "/v1/videos/{video_id}/content",
            {"url": f"/v1/videos/{video}/content", "params": {"variant": "gif"}},
            auth,
        ),
        (
            "post",
            "/v1/videos/{video_id}/remix",
            {"url": f"/v1/videos/{video}/remix", "json": {"prompt": "r"}},
            auth,
        ),
    ]
    seen = []
    for method, path, kwargs, headers in calls:
        kwargs = dict(kwargs)
        url = kwargs.pop("url", path)
        response = c.request(method.upper(), url, headers=headers, **kwargs)
        seen.append((path, method, response.status_code, response.json()))
    return seen


def test_every_error_the_routes_answer_is_documented(api: Api) -> None:
    seen = _probe(api)
    statuses = {status for _, _, status, _ in seen}
    assert {400, 401, 402, 403, 404, 409, 422} <= statuses
    schemas = api.document["components"]["schemas"]
    for path, method, status, body in seen:
        responses = api.document["paths"][path][method]["responses"]
        assert str(status) in responses, f"{method} {path} answered {status}, undocumented"
        ref = responses[str(status)]["content"]["application/json"]["schema"]["$ref"]
        schema = {**schemas[ref.rsplit("/", 1)[1]], "components": {"schemas": schemas}}
        jsonschema.Draft202012Validator(schema).validate(body)
        fields = set(body["error"])
        expected = (
            {"message", "type", "param", "code"}
            if "/v1/videos/" in path + "/" and (path != "/v1/videos/generations")
            else {"code", "message", "type"}
        )
        assert fields == expected, (path, method, body)
    no_422 = [
        (path, method)
        for path, ops in api.document["paths"].items()
        for method, op in ops.items()
        if "422" in op["responses"]
    ]
    assert sorted(no_422) == [("/v1/videos", "post"), ("/v1/videos/generations", "post")]
